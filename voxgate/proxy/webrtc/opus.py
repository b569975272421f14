"""Opus for voxgate's own tracks, without aiortc's per-frame thread hops.

- :class:`OpusVoiceEncoder` encodes PCM16 24 kHz mono straight to Opus
  (libopus through PyAV, no resampler; RFC 7587: the RTP clock stays
  48 kHz whatever the input rate) with settings for voice; an idle sender
  sends one canned silence packet instead of encoding zeros.
  ``OutputAudioTrack.recv`` returns its ``av.Packet`` s, which
  ``RTCRtpSender`` only packs (``OpusEncoder.pack``): no encoding in the
  sender's thread pool.
- :class:`OpusDecoder48` decodes the browser's Opus (48 kHz mono) to PCM16
  24 kHz for the inbound fast path (``voxgate.proxy.webrtc.rtp_in``).
"""

from __future__ import annotations

import fractions
import logging

import av
import numpy as np
from av.audio.codeccontext import AudioCodecContext

__all__ = ["OpusVoiceEncoder", "OpusDecoder48", "opus_packet", "SILENCE_PACKET", "RTP_CLOCK",
           "ENCODE_RATE", "pcm_of"]

log = logging.getLogger("voxgate.webrtc")

RTP_CLOCK = 48000  # Hz, Opus RTP timestamps (RFC 7587 §4.1)
ENCODE_RATE = 24000  # Hz, the provider's PCM, encoded as it is
_TIME_BASE = fractions.Fraction(1, RTP_CLOCK)

# Voice settings (docs/benchmarks.md, WebRTC: CPU and SNR per setting).
BIT_RATE = 32000  # bit/s, as browsers send voice
COMPLEXITY = 0  # libopus 0-10: CELT at 0 costs half of 5, same SNR on speech
APPLICATION = "audio"  # CELT: a third of "voip"'s (SILK) encode CPU, no lower SNR


def _encoder(frame_ms: int) -> AudioCodecContext:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = ENCODE_RATE
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = BIT_RATE
    codec.time_base = fractions.Fraction(1, ENCODE_RATE)
    codec.options = {"application": APPLICATION, "compression_level": str(COMPLEXITY),
                     "frame_duration": str(frame_ms)}
    codec.open()
    return codec


def _silence_packet(frame_ms: int) -> bytes:
    codec = _encoder(frame_ms)
    zeros = np.zeros((1, ENCODE_RATE * frame_ms // 1000), dtype="<i2")
    payload = b""
    for i in range(3):  # past the encoder's start-up frames
        frame = av.AudioFrame.from_ndarray(zeros, format="s16", layout="mono")
        frame.sample_rate = ENCODE_RATE
        frame.pts = i * zeros.shape[1]
        for packet in codec.encode(frame):
            payload = bytes(packet)
    return payload


SILENCE_PACKET = _silence_packet(20)
"""One 20 ms Opus frame of digital silence (a few bytes)."""


class OpusVoiceEncoder:
    """PCM16 24 kHz mono frames → Opus RTP payloads (bytes; :meth:`packet`
    makes the ``av.Packet`` stamped in the 48 kHz RTP clock).

    Args:
        frame_ms: the frame (and packet) duration, in ms (20 ms: ``ptime``
            of browsers' offers).
    """

    FLUSH_FRAMES = 2  # zero frames encoded after speech: its tail, then silence

    def __init__(self, frame_ms: int = 20) -> None:
        self.frame_ms = frame_ms
        self.frame_samples = ENCODE_RATE * frame_ms // 1000
        self.frame_bytes = self.frame_samples * 2
        self._codec = _encoder(frame_ms)
        self._zeros = bytes(self.frame_bytes)
        self._flush = 0

    def encode(self, pcm: bytes, index: int) -> bytes:
        """Frame ``index`` of the stream: ``pcm`` (``frame_bytes`` of PCM16
        24 kHz mono) encoded, as an Opus RTP payload. Raises ValueError on a
        wrong size."""
        if len(pcm) != self.frame_bytes:
            raise ValueError(f"an Opus frame is {self.frame_bytes} bytes of PCM16, not {len(pcm)}")
        self._flush = self.FLUSH_FRAMES
        return self._encode(pcm, index)

    def silence(self, index: int) -> bytes:
        """Frame ``index`` as silence: the end of the last speech (a couple
        of encoded zero frames), then the canned silence packet."""
        if self._flush:
            self._flush -= 1
            return self._encode(self._zeros, index)
        return SILENCE_PACKET

    def _encode(self, pcm: bytes, index: int) -> bytes:
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = ENCODE_RATE
        frame.pts = index * self.frame_samples
        payload = b""
        for packet in self._codec.encode(frame):
            payload = bytes(packet)
        return payload or SILENCE_PACKET

    def packet(self, payload: bytes, index: int) -> av.Packet:
        """``payload`` as frame ``index``'s ``av.Packet`` (:func:`opus_packet`)."""
        return opus_packet(payload, index, self.frame_ms)


def opus_packet(payload: bytes, index: int, frame_ms: int = 20) -> av.Packet:
    """Opus ``payload`` as frame ``index`` of a stream of ``frame_ms`` frames:
    the ``av.Packet`` (``pts`` in the 48 kHz RTP clock, RFC 7587 §4.1) that
    aiortc's ``RTCRtpSender`` packs as it is."""
    packet = av.Packet(payload)
    packet.pts = index * (RTP_CLOCK * frame_ms // 1000)
    packet.time_base = _TIME_BASE
    return packet


class OpusDecoder48:
    """Opus RTP payloads → PCM16 24 kHz mono bytes: decoded at 48 kHz mono
    (libopus downmixes a stereo packet), resampled by ``av.AudioResampler``
    (swresample) frame by frame; :meth:`flush` returns the resampler's last
    few samples, so the total is the input's duration. An undecodable
    payload gives ``b""``."""

    def __init__(self) -> None:
        self._codec = av.CodecContext.create("libopus", "r")
        self._codec.sample_rate = RTP_CLOCK
        self._codec.layout = "mono"
        self._codec.format = "s16"
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=ENCODE_RATE)

    def decode(self, payload: bytes) -> bytes:
        try:
            frames = self._codec.decode(av.Packet(payload))
        except av.FFmpegError as exc:
            log.debug("undecodable Opus frame: %s", exc)
            return b""
        return b"".join(pcm_of(out) for f in frames for out in self._resampler.resample(f))

    def flush(self) -> bytes:
        return b"".join(pcm_of(out) for out in self._resampler.resample(None))


def pcm_of(frame: av.AudioFrame) -> bytes:
    return bytes(frame.planes[0])[:frame.samples * 2]

