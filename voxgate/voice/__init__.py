"""voxgate's local OpenAI-Realtime-compatible voice provider.

Public API: :class:`VoiceProvider` and :func:`serve_forever` (in
:mod:`voxgate.voice.server`), the audio helpers :func:`load_pcm16` and
:func:`pcm16_to_wav` (in :mod:`voxgate.voice.audio`), and fault parsing
(:mod:`voxgate.voice.faults`). Importing this package loads no models.
"""

from voxgate.voice.audio import load_pcm16, pcm16_to_wav
from voxgate.voice.faults import Faults, parse_faults
from voxgate.voice.server import VoiceProvider, serve_forever

__all__ = ["VoiceProvider", "serve_forever", "load_pcm16", "pcm16_to_wav", "Faults", "parse_faults"]
