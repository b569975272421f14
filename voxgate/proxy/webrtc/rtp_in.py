"""Inbound RTP for voxgate's calls, without aiortc's per-frame thread hops
(aiortc keeps ICE, DTLS, SRTP, SCTP, RTCP and the RTP headers).

:func:`decode_inline` replaces an ``RTCRtpReceiver``'s jitter buffer and
decoder thread: each Opus packet is decoded on the event loop as it
arrives, in sequence order (libopus, 48 kHz mono: FFmpeg's libopus decoder
always outputs 48 kHz), resampled to 24 kHz and handed to a callback as
PCM16; no 80 ms prefetch, no thread, no ``queue.Queue``, no
``run_coroutine_threadsafe`` per frame. :func:`receive_inline` takes the
call's SRTP packets straight off its ICE connection (:class:`InboundRtp`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pylibsrtp
from aiortc import clock as rtc_clock

from voxgate.proxy.webrtc.opus import OpusDecoder48

__all__ = ["InlineAudioReceiver", "decode_inline", "InboundRtp", "receive_inline"]

log = logging.getLogger("voxgate.webrtc")


class InlineAudioReceiver:
    """Stands in for an ``RTCRtpReceiver``'s audio jitter buffer and decoder
    queue (:func:`decode_inline`). ``add`` (the jitter buffer's) takes each
    RTP packet as it arrives and decodes it at once, in sequence order: a
    packet after a gap waits for the missing ones for at most
    :attr:`MAX_HELD` packets, then they are given up (lost audio is not
    appended, so not metered); late and repeated packets are dropped.
    aiortc's own buffer holds four packets (80 ms) before releasing one,
    which the provider would hear as latency. ``get`` (the decoder
    thread's) returns ``None`` at once, so that thread ends; ``put(None)``
    (the receiver stopping) decodes what is held and calls ``on_end``."""

    MAX_HELD = 3  # packets (60 ms of 20 ms frames)

    def __init__(self, on_pcm: Callable[[bytes], None], on_end: Callable[[], None]) -> None:
        self._decoder = OpusDecoder48()
        self._on_pcm = on_pcm
        self._on_end = on_end
        self._next: int | None = None  # the sequence number expected
        self._held: dict[int, bytes] = {}
        self._ended = False
        self.lost = 0  # packets given up

    # -- the jitter buffer's API -------------------------------------------

    def add(self, packet: Any) -> tuple[bool, None]:
        # ``packet._data``: the depayloaded frame, set by RTCRtpReceiver
        self.add_payload(packet.sequence_number, packet._data)
        return False, None

    def add_payload(self, seq: int, data: bytes) -> None:
        """The Opus payload of the RTP packet numbered ``seq``."""
        if self._ended:
            return
        if self._next is None:
            self._next = seq
        ahead = (seq - self._next) & 0xFFFF
        if ahead >= 0x8000:
            return  # late or repeated
        if ahead == 0:
            self._decode(data)
            self._next = (seq + 1) & 0xFFFF
            if self._held:
                self._release()
        else:
            self._held[seq] = data
            if len(self._held) > self.MAX_HELD:
                self._skip_to_held()

    # -- the decoder queue's API ---------------------------------------------

    def get(self, *args: Any, **kwargs: Any) -> None:
        return None

    def put(self, item: Any, *args: Any, **kwargs: Any) -> None:
        if item is None and not self._ended:
            while self._held:
                self._skip_to_held()
            self._ended = True
            rest = self._decoder.flush()
            if rest:
                self._on_pcm(rest)
            self._on_end()

    # ------------------------------------------------------------------------

    def _decode(self, payload: bytes) -> None:
        pcm = self._decoder.decode(payload)
        if pcm:
            self._on_pcm(pcm)

    def _release(self) -> None:
        while self._held and self._next in self._held:
            assert self._next is not None
            self._decode(self._held.pop(self._next))
            self._next = (self._next + 1) & 0xFFFF

    def _skip_to_held(self) -> None:
        """Give up the missing packets before the first one held."""
        assert self._next is not None
        nxt = self._next
        first = min(self._held, key=lambda s: (s - nxt) & 0xFFFF)
        self.lost += (first - nxt) & 0xFFFF
        self._next = first
        self._release()


_SEAMS = ("_RTCRtpReceiver__jitter_buffer", "_RTCRtpReceiver__decoder_queue")


def decode_inline(receiver: Any, on_pcm: Callable[[bytes], None],
                  on_end: Callable[[], None]) -> InlineAudioReceiver:
    """Decode ``receiver``'s (an ``aiortc.RTCRtpReceiver`` of Opus audio,
    before ``receive()``) packets on the event loop as they arrive:
    ``on_pcm(pcm24k)`` with 20 ms of PCM16 24 kHz mono per 20 ms frame;
    ``on_end()`` when the receiver stops. Its ``track`` then yields nothing.
    aiortc keeps SRTP, RTCP and its receive statistics.

    Raises:
        RuntimeError: this aiortc has no such seams (``RTCRtpReceiver``'s
            private ``__jitter_buffer`` and ``__decoder_queue``, aiortc
            1.9-1.16).
    """
    if not all(hasattr(receiver, name) for name in _SEAMS):
        raise RuntimeError("aiortc's RTCRtpReceiver has no jitter buffer or decoder queue "
                           "to replace: voxgate.proxy.webrtc.rtp_in does not support this aiortc")
    inline = InlineAudioReceiver(on_pcm, on_end)
    for name in _SEAMS:
        setattr(receiver, name, inline)
    return inline


class _Seen:
    """What aiortc's ``StreamStatistics.add`` reads of an RTP packet."""

    __slots__ = ("sequence_number", "timestamp")

    def __init__(self) -> None:
        self.sequence_number = 0
        self.timestamp = 0


class InboundRtp:
    """The browser's audio RTP straight from the ICE connection's datagram
    callback to :class:`InlineAudioReceiver`: no ``asyncio.Queue`` and task
    wake-up per packet (aioice's ``Connection.recv``, the DTLS transport's
    receive loop), no ``RtpPacket`` with header extensions, no RTP router.
    aiortc's SRTP session does the unprotecting, its receive statistics
    (RTCP receiver reports) and transport counters are kept as it keeps
    them.

    Only a packet of the audio receiver's SSRC (once aiortc's RTP router
    has learnt it from the first packet) and payload type, after the DTLS
    handshake, takes this path; everything else (STUN, DTLS, SCTP, RTCP,
    other streams) goes on to aioice as before. The RTP header is read as
    RFC 3550 §5.1 lays it out (CSRCs, the RFC 8285 extension block and
    padding skipped); SRTP leaves it in the clear (RFC 3711 §3.1).

    Args:
        receiver: the ``aiortc.RTCRtpReceiver`` whose jitter buffer
            :func:`decode_inline` replaced with ``inline``.
        inline: that :class:`InlineAudioReceiver`.
    """

    def __init__(self, receiver: Any, inline: InlineAudioReceiver) -> None:
        self._receiver = receiver
        self._inline = inline
        self._dtls = receiver.transport
        self._router = self._dtls._rtp_router
        self._streams = receiver._RTCRtpReceiver__remote_streams
        self._active = receiver._RTCRtpReceiver__active_ssrc
        self._seen = _Seen()
        self.packets = 0  # taken on this path

    def __call__(self, data: bytes) -> bool:
        """Take ``data`` (one datagram) if it is this receiver's RTP; False
        leaves it to aioice."""
        if len(data) < 12 or not 127 < data[0] < 192 or 191 < data[1] < 224:
            return False  # not RTP (RFC 7983 demultiplexing; 192-223: RTCP)
        dtls = self._dtls
        srtp = dtls._rx_srtp
        if srtp is None or not self._receiver._enabled:
            return False
        ssrc = int.from_bytes(data[8:12], "big")
        receiver = self._router.ssrc_table.get(ssrc)
        if receiver is not self._receiver:
            return False  # an unknown SSRC: aiortc's router learns it
        stats = self._streams.get(ssrc)
        if stats is None or receiver not in self._router.payload_type_table.get(data[1] & 0x7F, ()):
            return False
        try:
            plain = srtp.unprotect(data)
        except pylibsrtp.Error as exc:  # dropped, as aiortc drops it
            log.debug("SRTP unprotect failed: %s", exc)
            return True
        dtls._RTCDtlsTransport__rx_bytes += len(data)
        dtls._RTCDtlsTransport__rx_packets += 1
        first = plain[0]
        pos = 12 + 4 * (first & 0x0F)
        end = len(plain)
        if first & 0x10:  # header extension: profile, length in 32-bit words
            if end < pos + 4:
                return True
            pos += 4 + 4 * int.from_bytes(plain[pos + 2:pos + 4], "big")
        if first & 0x20:  # padding: its length is the last byte
            end -= plain[-1]
        if end < pos:
            return True  # malformed: dropped, as aiortc drops it
        seq = int.from_bytes(plain[2:4], "big")
        seen = self._seen
        seen.sequence_number = seq
        seen.timestamp = int.from_bytes(plain[4:8], "big")
        stats.add(seen)
        self.packets += 1
        if not self.packets & 63:  # getSynchronizationSources(): about every 1.3 s
            self._active[ssrc] = rtc_clock.current_datetime()
        self._inline.add_payload(seq, plain[pos:end])
        return True


def receive_inline(receiver: Any, inline: InlineAudioReceiver) -> InboundRtp | None:
    """The fast path for ``receiver``'s packets (:class:`InboundRtp`), or
    None when this aiortc lacks the seams it reads (then every packet goes
    the way aiortc takes it, through :func:`decode_inline`'s receiver)."""
    try:
        return InboundRtp(receiver, inline)
    except AttributeError as exc:
        log.debug("no inbound RTP fast path on this aiortc: %s", exc)
        return None
