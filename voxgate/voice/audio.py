"""Audio helpers for the local voice provider and its clients.

Everything here works on *PCM16*: signed 16-bit little-endian mono samples,
as bytes (2 bytes per sample). Rates are in Hz, durations in ms.

- :func:`load_pcm16` decodes a speech file (WAV, FLAC, anything PyAV reads, or
  a headerless ``.raw`` file of 16 kHz s16le mono) and resamples it.
- :func:`resample_pcm16` converts between rates with PyAV's
  ``AudioResampler`` (libswresample); :class:`StreamResampler` does the same
  chunk by chunk, keeping the filter state between chunks.
- :func:`ulaw_encode` / :func:`ulaw_decode` / :func:`alaw_encode` /
  :func:`alaw_decode` implement ITU-T G.711 with numpy lookup tables (the
  Realtime ``audio/pcmu`` and ``audio/pcma`` formats, 8 kHz, 1 byte per
  sample).
- :func:`decimate3` is a cheap 24 kHz → 8 kHz down-sampler for voice
  activity detection (a 3-tap mean, then every third sample).
- :func:`pcm16_to_wav` wraps PCM16 in a RIFF/WAVE header (stdlib ``wave``).

Only :func:`load_pcm16` touches the file system.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import av
import numpy as np

__all__ = [
    "RAW_RATE",
    "load_pcm16",
    "pcm16_to_wav",
    "resample_pcm16",
    "StreamResampler",
    "ulaw_encode",
    "ulaw_decode",
    "alaw_encode",
    "alaw_decode",
    "decimate3",
    "pcm16_ms",
]

RAW_RATE = 16000
"""Sample rate assumed for headerless ``.raw`` files (s16le mono), in Hz."""


def pcm16_ms(n_bytes: int, rate: int) -> float:
    """Duration in ms of ``n_bytes`` of PCM16 mono at ``rate`` Hz."""
    return n_bytes * 1000.0 / (2 * rate)


# --- resampling ------------------------------------------------------------


class StreamResampler:
    """Chunk-by-chunk PCM16 mono resampler (PyAV ``AudioResampler``).

    Feed byte strings of PCM16 at ``in_rate`` to :meth:`feed`; each call
    returns the PCM16 at ``out_rate`` produced so far. :meth:`flush` returns
    what the filter still holds at the end of the stream. Not thread-safe;
    one instance per stream.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._resampler = (
            None if in_rate == out_rate
            else av.AudioResampler(format="s16", layout="mono", rate=out_rate)
        )
        self._pts = 0

    def feed(self, pcm: bytes) -> bytes:
        """Resample one chunk (an even number of bytes)."""
        if self._resampler is None or not pcm:
            return bytes(pcm)
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.in_rate
        frame.pts = self._pts
        self._pts += samples.shape[1]
        return b"".join(bytes(out.planes[0])[: out.samples * 2] for out in self._resampler.resample(frame))

    def flush(self) -> bytes:
        """Drain the filter; the resampler must not be fed afterwards."""
        if self._resampler is None:
            return b""
        return b"".join(bytes(out.planes[0])[: out.samples * 2] for out in self._resampler.resample(None))


def resample_pcm16(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    """Resample a whole PCM16 mono buffer from ``in_rate`` to ``out_rate`` Hz."""
    if in_rate == out_rate:
        return bytes(pcm)
    r = StreamResampler(in_rate, out_rate)
    return r.feed(pcm) + r.flush()


def decimate3(pcm: bytes) -> bytes:
    """24 kHz → 8 kHz PCM16 by averaging each group of three samples.

    Crude (no proper anti-alias filter) but cheap and good enough for voice
    activity detection. A trailing partial group is dropped: feed multiples of
    6 bytes (30 ms at 24 kHz = 1 440 bytes is one).
    """
    x = np.frombuffer(pcm, dtype="<i2")
    n = len(x) - len(x) % 3
    y = x[:n].reshape(-1, 3).astype(np.int32).sum(axis=1) // 3
    return y.astype("<i2").tobytes()


# --- G.711 (ITU-T G.711 μ-law and A-law) -----------------------------------


def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


def _encode_table(decode: np.ndarray) -> np.ndarray:
    """For every int16 value (offset by 32768), the code whose decoded value
    is nearest: exact G.711 quantisation by table, no branching per sample."""
    order = np.argsort(decode.astype(np.int32), kind="stable")
    levels = decode[order].astype(np.int32)
    values = np.arange(-32768, 32768, dtype=np.int32)
    idx = np.clip(np.searchsorted(levels, values), 1, len(levels) - 1)
    lower, upper = levels[idx - 1], levels[idx]
    pick = np.where(values - lower <= upper - values, idx - 1, idx)
    return order[pick].astype(np.uint8)


_ULAW_DEC = _ulaw_decode_table()
_ALAW_DEC = _alaw_decode_table()
_ULAW_ENC = _encode_table(_ULAW_DEC)
_ALAW_ENC = _encode_table(_ALAW_DEC)


def ulaw_decode(data: bytes) -> bytes:
    """G.711 μ-law bytes (1 per sample) → PCM16 bytes (same rate)."""
    return _ULAW_DEC[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def alaw_decode(data: bytes) -> bytes:
    """G.711 A-law bytes (1 per sample) → PCM16 bytes (same rate)."""
    return _ALAW_DEC[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def ulaw_encode(pcm: bytes) -> bytes:
    """PCM16 bytes → G.711 μ-law bytes (1 per sample, same rate)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32) + 32768
    return _ULAW_ENC[x].tobytes()


def alaw_encode(pcm: bytes) -> bytes:
    """PCM16 bytes → G.711 A-law bytes (1 per sample, same rate)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32) + 32768
    return _ALAW_ENC[x].tobytes()


# --- files -----------------------------------------------------------------


def load_pcm16(path: str | Path, rate: int = 24000) -> bytes:
    """Decode a speech file into PCM16 mono at ``rate`` Hz.

    WAV, FLAC and anything else FFmpeg reads are decoded with PyAV (the first
    audio stream; channels are mixed down to mono). A ``.raw`` file is taken
    as headerless 16 kHz s16le mono.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not decodable audio (bad header, no audio
            stream, no samples), or a ``.raw`` file has an odd byte count.
    """
    path = Path(path)
    if path.suffix.lower() == ".raw":
        data = path.read_bytes()
        if len(data) % 2:
            raise ValueError(f"{path}: odd byte count for 16-bit raw audio")
        return resample_pcm16(data, RAW_RATE, rate)
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            chunks: list[bytes] = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(bytes(out.planes[0])[: out.samples * 2])
            for out in resampler.resample(None):
                chunks.append(bytes(out.planes[0])[: out.samples * 2])
    except av.FFmpegError as exc:
        raise ValueError(f"{path}: not decodable audio ({exc})") from exc
    pcm = b"".join(chunks)
    if not pcm:
        raise ValueError(f"{path}: no audio samples")
    return pcm


def pcm16_to_wav(pcm: bytes, rate: int) -> bytes:
    """Wrap PCM16 mono bytes at ``rate`` Hz in a WAV (RIFF) container."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()
