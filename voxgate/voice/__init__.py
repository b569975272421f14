"""voxgate's local OpenAI-Realtime-compatible voice provider.

Public API: :class:`VoiceProvider` and :func:`serve_forever` (in
:mod:`voxgate.voice.server`), the audio helpers :func:`load_pcm16` and
:func:`pcm16_to_wav` (in :mod:`voxgate.voice.audio`), and fault parsing
(:mod:`voxgate.voice.faults`). Importing this package loads no models.

Modules: :mod:`~voxgate.voice.server` (HTTP, WebSocket upgrade),
:mod:`~voxgate.voice.engines` (what the provider hands each session),
:mod:`~voxgate.voice.realtime` (one session's events and tasks),
:mod:`~voxgate.voice.responses` (response generation),
:mod:`~voxgate.voice.input_audio` (input audio buffer, turn detection),
:mod:`~voxgate.voice.session` (session config),
:mod:`~voxgate.voice.items` (items and ``response.create`` parameters),
:mod:`~voxgate.voice.usage` (token estimates, ``response.usage``),
:mod:`~voxgate.voice.ids` (object ids),
:mod:`~voxgate.voice.tools` (the deterministic function-calling rule),
:mod:`~voxgate.voice.responder` (reply text, chat-completions upstream),
:mod:`~voxgate.voice.vad`, :mod:`~voxgate.voice.stt`, :mod:`~voxgate.voice.tts`,
:mod:`~voxgate.voice.audio`.
"""

from voxgate.voice.audio import load_pcm16, pcm16_to_wav
from voxgate.voice.faults import Faults, parse_faults
from voxgate.voice.server import VoiceProvider, serve_forever

__all__ = ["VoiceProvider", "serve_forever", "load_pcm16", "pcm16_to_wav", "Faults", "parse_faults"]
