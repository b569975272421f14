"""Fixtures for the third-party SDK tests: a spoken request made with the
local provider's own text to speech (Piper) at set-up."""

from __future__ import annotations

import pytest

SPOKEN_REQUEST = "What is the weather forecast in London?"
"""Names the ``get_weather`` tool by a keyword of its description ("weather")."""


@pytest.fixture(scope="session")
def spoken_request() -> bytes:
    """:data:`SPOKEN_REQUEST` as 24 kHz PCM16 mono, with 0.5 s of silence
    before and 1.5 s after (enough for turn detection to end the turn)."""
    from voxgate.voice.audio import resample_pcm16
    from voxgate.voice.tts import Synthesizer

    synth = Synthesizer(threads=1)
    try:
        pcm = synth.synthesize_sync(SPOKEN_REQUEST)
        return bytes(24000) + resample_pcm16(pcm, synth.sample_rate, 24000) + bytes(72000)
    finally:
        synth.pool.shutdown()
