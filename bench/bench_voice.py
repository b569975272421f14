"""The local provider's models on the speech in ``/work/shared/speech``:
TTS time to first audio (Piper, the first sentence of a typical reply) and
STT real-time factor (PocketSphinx: decode time / audio duration)."""

from __future__ import annotations

import time

from bench.common import SPEECH

REPLIES = (
    "You said: go forward ten meters. I heard 4 words.",
    "Hello! How can I help you today?",
    "You said: and so my fellow americans ask not what your country can do for you. I heard 12 words.",
)
FILES = ("jfk.flac", "librivox-0870.wav", "librivox-0880.wav", "librivox-0890.wav",
         "goforward-16k-s16le.raw")


def run_tts(repeats: int = 5) -> list[dict]:
    from voxgate.voice.tts import Synthesizer, split_sentences

    synth = Synthesizer()
    t = time.perf_counter()
    synth.load()
    load_s = time.perf_counter() - t
    rows = []
    for reply in REPLIES:
        first = split_sentences(reply)[0]
        times = []
        audio_ms = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            pcm = synth.synthesize_sync(first)
            times.append((time.perf_counter() - t) * 1000)
            audio_ms = len(pcm) / 2 / synth.sample_rate * 1000
        times.sort()
        rows.append({"sentence": first, "first_audio_ms_p50": times[len(times) // 2],
                     "first_audio_ms_max": times[-1], "audio_ms": audio_ms, "load_s": load_s})
    return rows


def run_stt() -> list[dict]:
    from voxgate.voice import stt
    from voxgate.voice.audio import load_pcm16

    rows = []
    stt.decode(load_pcm16(SPEECH / "goforward-16k-s16le.raw", 16000), 16000)  # load the model
    for name in FILES:
        path = SPEECH / name
        if not path.exists():
            continue
        pcm = load_pcm16(path, 24000)
        audio_s = len(pcm) / 48000
        t = time.perf_counter()
        text = stt.decode(pcm, 24000)
        dt = time.perf_counter() - t
        rows.append({"file": name, "audio_s": audio_s, "decode_s": dt, "rtf": dt / audio_s,
                     "heard": text})
    return rows


if __name__ == "__main__":
    import json

    print(json.dumps({"tts": run_tts(), "stt": run_stt()}, indent=2))
