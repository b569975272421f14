"""What a Realtime session is handed to do its work: the speech engines and
the provider's settings that shape a session, in one small object.

The provider (:class:`voxgate.voice.server.VoiceProvider`) builds an
:class:`Engines` per session and hands it to
:class:`voxgate.voice.realtime.RealtimeSession`; the session reaches for
nothing else of the provider. The engines are described by protocols, so
any recognizer or synthesizer with these methods serves
(:class:`voxgate.voice.stt.Recognizer` and
:class:`voxgate.voice.tts.Synthesizer` are the shipped ones).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp

__all__ = ["Engines", "ChatUpstream", "SpeechRecognizer", "SpeechSynthesizer"]


class SpeechRecognizer(Protocol):
    """Speech to text."""

    async def transcribe(self, pcm: bytes, rate: int) -> str:
        """The words of PCM16 mono audio at ``rate`` Hz."""
        ...


class SpeechSynthesizer(Protocol):
    """Text to speech, run in its own executor."""

    sample_rate: int
    """Hz of what :meth:`synthesize_sync` returns."""
    pool: concurrent.futures.ThreadPoolExecutor
    """Where :meth:`synthesize_sync` is run (it blocks)."""

    def synthesize_sync(self, sentence: str, length_scale: float = 1.0) -> bytes:
        """PCM16 mono at :attr:`sample_rate` (blocking); ``length_scale`` > 1
        speaks slower."""
        ...


@dataclass(frozen=True, slots=True)
class ChatUpstream:
    """An OpenAI-compatible chat-completions endpoint the ``chat`` responder
    asks (:func:`voxgate.voice.responder.chat_turn`)."""

    http: aiohttp.ClientSession
    url: str
    model: str
    api_key: str | None = None


@dataclass(frozen=True, slots=True)
class Engines:
    """A session's engines and settings.

    Attributes:
        recognizer: STT for committed audio and ``input_audio`` parts.
        synthesizer: TTS for audio responses.
        ensure_models: awaited before either is used (loads models once).
        responder: ``assistant``, ``echo`` or ``chat``
            (:attr:`voxgate.config.VoiceSettings.responder`).
        faults_enabled: whether ``session.voxgate_fault`` is honoured.
        chat: the chat upstream of the ``chat`` responder; None when the
            responder is another, or no ``chat_url`` or HTTP client is set
            (replies then come from the deterministic rules).
    """

    recognizer: SpeechRecognizer
    synthesizer: SpeechSynthesizer
    ensure_models: Callable[[], Awaitable[None]]
    responder: Literal["assistant", "echo", "chat"] = "assistant"
    faults_enabled: bool = False
    chat: ChatUpstream | None = None
