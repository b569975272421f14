"""The audio a load-test session streams: 20 ms chunks of 24 kHz PCM16
(or of G.711 μ-law / A-law at 8 kHz, for the format-switch sessions),
base64-encoded once, each tagged with its sequence number.

A tag is the chunk's sequence number in its first 4 bytes (2 samples,
little-endian), so the echo upstream's ``response.output_audio.delta``
names the chunk it answers: :func:`tag_of` reads it back from the first 8
base64 characters without decoding the rest. Tagging needs no re-encoding
of the whole chunk: only the first 8 base64 characters (6 bytes) change.
"""

from __future__ import annotations

import base64
import struct
from importlib import resources
from pathlib import Path

__all__ = ["RATE", "CHUNK_BYTES", "FORMAT_CHUNK_BYTES", "DEFAULT_CLIP", "Clip", "tag_of"]

RATE = 24000
"""Sample rate, in Hz."""
CHUNK_BYTES = RATE * 2 * 20 // 1000
"""Bytes of PCM16 in a 20 ms chunk (960)."""
FORMAT_CHUNK_BYTES = {"audio/pcm": CHUNK_BYTES, "audio/pcmu": 160, "audio/pcma": 160}
"""Bytes of a 20 ms chunk in each format (G.711: 8 kHz, one byte a sample)."""
DEFAULT_CLIP = "speech-24k.wav"
"""The clip shipped in ``voxgate/loadtest/data`` (6 s of LibriVox speech and
"go forward ten meters", 24 kHz PCM16 mono)."""

_TAG = struct.Struct("<I")


class Clip:
    """A recording cut into 20 ms chunks, looped to any length.

    Args:
        pcm: 24 kHz PCM16 mono (padded with silence to whole chunks).
    """

    def __init__(self, pcm: bytes) -> None:
        if len(pcm) % CHUNK_BYTES:
            pcm = pcm + bytes(CHUNK_BYTES - len(pcm) % CHUNK_BYTES)
        if not pcm:
            pcm = bytes(CHUNK_BYTES)
        self._chunks = [pcm[i:i + CHUNK_BYTES] for i in range(0, len(pcm), CHUNK_BYTES)]
        self._b64 = [base64.b64encode(c).decode() for c in self._chunks]
        self._g711: dict[str, list[bytes]] = {}

    @classmethod
    def load(cls, path: str | Path | None = None) -> Clip:
        """The shipped clip, or any file :func:`voxgate.voice.audio.load_pcm16` reads.

        Raises:
            OSError, ValueError: unreadable file.
        """
        from voxgate.voice.audio import load_pcm16

        if path is None:
            with resources.as_file(resources.files("voxgate.loadtest") / "data" / DEFAULT_CLIP) as p:
                return cls(load_pcm16(p, RATE))
        return cls(load_pcm16(path, RATE))

    def pcm24k(self) -> bytes:
        """The whole clip, untagged (24 kHz PCM16)."""
        return b"".join(self._chunks)

    @property
    def duration_ms(self) -> int:
        return len(self._chunks) * 20

    def chunk_b64(self, seq: int, fmt: str = "audio/pcm") -> str:
        """Chunk ``seq`` (looping the clip), tagged with ``seq``, as base64:
        24 kHz PCM16 (960 bytes), or for ``fmt`` ``audio/pcmu`` /
        ``audio/pcma`` the same 20 ms at 8 kHz in G.711 (160 bytes).

        Raises:
            KeyError: an unknown ``fmt``.
        """
        i = seq % len(self._chunks)
        if fmt == "audio/pcm":
            head = _TAG.pack(seq & 0xFFFFFFFF) + self._chunks[i][4:6]
            return base64.b64encode(head).decode() + self._b64[i][8:]
        chunk = self._g711_chunks(fmt)[i]
        return base64.b64encode(_TAG.pack(seq & 0xFFFFFFFF) + chunk[4:]).decode()

    def _g711_chunks(self, fmt: str) -> list[bytes]:
        chunks = self._g711.get(fmt)
        if chunks is None:
            from voxgate.voice.audio import alaw_encode, decimate3, ulaw_encode

            encode = {"audio/pcmu": ulaw_encode, "audio/pcma": alaw_encode}[fmt]
            chunks = [encode(decimate3(c)) for c in self._chunks]  # 480 samples → 160
            self._g711[fmt] = chunks
        return chunks


def tag_of(b64: str) -> int | None:
    """The sequence number tagged into a chunk's base64 (None if unreadable)."""
    try:
        return _TAG.unpack_from(base64.b64decode(b64[:8]))[0]
    except (ValueError, struct.error):
        return None
