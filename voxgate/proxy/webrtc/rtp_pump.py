"""One pacing loop sends every outgoing audio stream of the process: on each
20 ms tick of the frame grid (``media.FrameGrid``) it takes each stream's
due frame from its track, writes the RTP header, has aiortc's SRTP session
protect it and hands it to the ICE connection's selected candidate pair,
all in one pass. aiortc's own sender (``RTCRtpSender._run_rtp``) runs one
task per call that wakes per frame and builds an ``RtpPacket`` with its
header extensions each time; with the pump a tick is one wake-up for all
calls. aiortc keeps ICE, DTLS, SRTP, RTCP (sender reports read the
counters the pump keeps, as ``_run_rtp`` keeps them) and the sender's
life cycle (``RTCRtpSender.stop`` ends the stream).

RTP as aiortc writes it (RFC 3550 §5.1; RFC 7587 for Opus: the timestamp
in the 48 kHz clock, marker set on each packet as aiortc sets it), the
header extensions the sender negotiated (RFC 8285: ``sdes:mid``, and
``abs-send-time`` when negotiated) in aiortc's own serialisation, written
once per stream; only the sequence number, timestamp and send time change.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any, Protocol

import pylibsrtp
from aiortc import clock as rtc_clock
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import RtpPacket
from aiortc.utils import random32

from voxgate.proxy.webrtc.media import FRAME_GRID, FRAME_S, FrameGrid

__all__ = ["FrameSource", "RtpPump", "RtpStream", "pump_sender", "RTP_PUMP", "LATE_S"]

log = logging.getLogger("voxgate.webrtc")

LATE_S = 0.060
"""A frame sent more than this after its tick is late, in seconds."""
TICKS_PER_FRAME = 960  # 20 ms in the 48 kHz RTP clock (RFC 7587 §4.1)


class FrameSource(Protocol):
    """What the pump takes frames from (``media.OutputAudioTrack``)."""

    @property
    def readyState(self) -> str: ...  # noqa: N802 (MediaStreamTrack's name)

    def due_tick(self, now: float) -> int:
        """The grid tick the next frame falls due on (``now``: monotonic s)."""
        ...

    def next_frame(self) -> tuple[bytes, int]:
        """The next frame: (Opus payload, frame index)."""
        ...

    def stop(self) -> None: ...


class RtpStream:
    """One sender's RTP stream, fed by the pump.

    Args:
        sender: the ``aiortc.RTCRtpSender`` (its SSRC, MID, header extension
            map, DTLS transport and RTCP counters).
        source: its track.
        payload_type: the negotiated Opus payload type.

    Raises:
        AttributeError: this aiortc lacks the sender's private state the
            stream keeps (aiortc 1.9-1.16 have it).
    """

    _HEADER = struct.Struct("!HI")  # sequence number, timestamp at offset 2

    def __init__(self, sender: Any, source: FrameSource, payload_type: int) -> None:
        self.sender = sender
        self.source = source
        self.dtls = sender.transport
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq = random_sequence_number()  # low half: no early wrap (SRTP's ROC)
        self._ts0 = random32()
        mid = sender._RTCRtpSender__mid
        extensions = sender._RTCRtpSender__rtp_header_extensions_map
        for owner, name in ((sender, "_RTCRtpSender__packet_count"),
                            (sender, "_RTCRtpSender__octet_count"),
                            (self.dtls, "_RTCDtlsTransport__tx_packets")):
            if not hasattr(owner, name):
                raise AttributeError(name)

        def header(abs_send_time: int) -> bytes:
            packet = RtpPacket(payload_type=payload_type, marker=1)
            packet.ssrc = sender._ssrc
            packet.extensions.abs_send_time = abs_send_time
            packet.extensions.mid = mid
            return packet.serialize(extensions)

        self._template = header(0)
        other = header(0xFFFFFF)
        moved = [i for i, (a, b) in enumerate(zip(self._template, other, strict=True)) if a != b]
        self._abs_at = moved[0] if moved else None  # abs-send-time's 3 bytes, if negotiated

    def send_due(self, tick: int, now: float, ntp: int, pump: RtpPump) -> None:
        """Send the frames due by ``tick``: normally one. Ends the stream
        (:attr:`ended`) when the track ends or the transport is gone."""
        source = self.source
        try:
            while source.readyState == "live":
                due = source.due_tick(now)
                if source.readyState != "live":
                    break  # the track ended (its last frame was sent)
                if due > tick:
                    return
                if now - due * FRAME_S > LATE_S:
                    pump.late_frames += 1
                payload, index = source.next_frame()
                if self.sender._enabled:
                    self._send(payload, index, ntp)
        except ConnectionError:
            pass
        except (pylibsrtp.Error, OSError, RuntimeError) as exc:
            log.warning("RTP stream ended: %s", exc)
        self.finish()

    def finish(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    def _send(self, payload: bytes, index: int, ntp: int) -> None:
        """RTP → SRTP → the selected candidate pair (RFC 3711, RFC 8445)."""
        dtls = self.dtls
        if dtls._state != DtlsState.CONNECTED:
            raise ConnectionError("Cannot send encrypted RTP, not connected")
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        timestamp = (self._ts0 + index * TICKS_PER_FRAME) & 0xFFFFFFFF
        header = bytearray(self._template)
        self._HEADER.pack_into(header, 2, self._seq, timestamp)
        if self._abs_at is not None:
            at = self._abs_at
            header[at:at + 3] = ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big")
        header += payload
        data = dtls._tx_srtp.protect(bytes(header))
        pair.protocol.transport.sendto(data, pair.remote_addr)
        self._seq = (self._seq + 1) & 0xFFFF
        sender = self.sender
        sender._RTCRtpSender__ntp_timestamp = ntp
        sender._RTCRtpSender__rtp_timestamp = timestamp
        sender._RTCRtpSender__octet_count += len(payload)
        sender._RTCRtpSender__packet_count += 1
        dtls._RTCDtlsTransport__tx_bytes += len(data)
        dtls._RTCDtlsTransport__tx_packets += 1


class RtpPump:
    """The process's outgoing RTP: every stream's frame on each grid tick,
    in one task that runs while there are streams.

    :attr:`late_frames` counts frames sent more than :data:`LATE_S` after
    their tick (a starved event loop); a track that falls more than
    ``media.MAX_LAG_S`` behind skips frames instead (its
    ``frames_skipped``).

    Args:
        grid: the ticks (its clock too).
    """

    def __init__(self, grid: FrameGrid = FRAME_GRID) -> None:
        self.grid = grid
        self._streams: dict[RtpStream, None] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.late_frames = 0

    def add(self, stream: RtpStream) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests run one per test)
            self._loop, self._task = loop, None
            self._streams.clear()
        self._streams[stream] = None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="rtp pump")

    def remove(self, stream: RtpStream) -> None:
        self._streams.pop(stream, None)

    @property
    def streams(self) -> int:
        return len(self._streams)

    async def _run(self) -> None:
        grid = self.grid
        tick = grid.tick_at(grid.clock()) - 1
        while self._streams:
            tick = max(tick + 1, grid.tick_at(grid.clock()) - 1)
            await grid.wait(tick)
            ntp = rtc_clock.current_ntp_time()
            for stream in list(self._streams):
                try:  # the clock per stream: a pause mid-pass makes the rest late
                    stream.send_due(tick, grid.clock(), ntp, self)
                except Exception:  # one stream's bug must not silence the others
                    log.exception("RTP stream failed: it ends")
                    stream.finish()
                    self.remove(stream)


RTP_PUMP = RtpPump()
"""The process's pump."""


def pump_sender(sender: Any, source: FrameSource, pump: RtpPump = RTP_PUMP) -> bool:
    """Have ``pump`` send ``sender``'s RTP (``sender``: an
    ``aiortc.RTCRtpSender`` of ``source``, before it starts sending).
    Returns False, leaving aiortc's own send loop in place, when this
    aiortc lacks the sender's private state the pump keeps."""
    names = ("_RTCRtpSender__rtp_started", "_RTCRtpSender__rtp_exited", "_RTCRtpSender__mid",
             "_RTCRtpSender__rtp_header_extensions_map", "_run_rtp", "_ssrc")
    if not all(hasattr(sender, name) for name in names):
        log.debug("aiortc's RTCRtpSender lacks the pump's seams: its own send loop stays")
        return False

    async def run_rtp(codec: Any) -> None:
        sender._RTCRtpSender__rtp_started.set()
        stream = None
        try:
            stream = RtpStream(sender, source, codec.payloadType)
            pump.add(stream)
            await stream.ended
        except asyncio.CancelledError:
            pass
        except AttributeError as exc:
            log.warning("RTP stream not started: %s", exc)
        finally:
            if stream is not None:
                pump.remove(stream)
            source.stop()
            sender._RTCRtpSender__rtp_exited.set()

    sender._run_rtp = run_rtp
    return True
