"""voxgate's RTP layer on its own, with real SRTP (libsrtp through
pylibsrtp) and real RTP serialisation (aiortc's ``RtpPacket``): the inbound
fast path reads every header shape RFC 3550 allows and leaves what is not
its stream to aioice; the pump's packets are what aiortc's sender would
write, it keeps the sender's RTCP counters, catches up after a stall, and
one failing stream does not silence the others."""

from __future__ import annotations

import asyncio
import os
import time

import pylibsrtp
import pytest
from aiortc.rtcdtlstransport import State
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from voxgate.proxy.webrtc import rtp_pump
from voxgate.proxy.webrtc.media import FRAME_S, FrameGrid
from voxgate.proxy.webrtc.rtp_in import InboundRtp, InlineAudioReceiver

SSRC = 0x1234ABCD
PT = 111


class Obj:
    def __init__(self, **kw) -> None:
        self.__dict__.update(kw)


def srtp_pair() -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    key = os.urandom(30)  # AES128_CM_SHA1_80: 16-byte key + 14-byte salt
    tx = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    rx = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
    return pylibsrtp.Session(tx), pylibsrtp.Session(rx)


def extensions_map() -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(
            id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")]))
    return m


class Payloads(InlineAudioReceiver):
    """Records the payloads instead of decoding them."""

    def __init__(self) -> None:
        super().__init__(lambda pcm: None, lambda: None)
        self.got: list[tuple[int, bytes]] = []

    def add_payload(self, seq: int, data: bytes) -> None:
        self.got.append((seq, data))


def receiver_with(rx: pylibsrtp.Session) -> Obj:
    receiver = Obj(_enabled=True, _RTCRtpReceiver__remote_streams={},
                   _RTCRtpReceiver__active_ssrc={})
    router = Obj(ssrc_table={SSRC: receiver}, payload_type_table={PT: {receiver}})
    receiver.transport = Obj(_rx_srtp=rx, _rtp_router=router, _RTCDtlsTransport__rx_bytes=0,
                             _RTCDtlsTransport__rx_packets=0)
    receiver._RTCRtpReceiver__remote_streams[SSRC] = StreamStatistics(48000)
    return receiver


def packet(seq: int, payload: bytes, *, csrc=(), padding: int = 0, mid: str | None = "0",
           ssrc: int = SSRC, pt: int = PT) -> bytes:
    p = RtpPacket(payload_type=pt, sequence_number=seq, timestamp=seq * 960, ssrc=ssrc,
                  payload=payload)
    p.csrc = list(csrc)
    p.padding_size = padding
    p.extensions.mid = mid
    p.extensions.abs_send_time = 0x123456 if mid else None
    return p.serialize(extensions_map())


def test_inbound_fast_path_reads_every_header_shape():
    tx, rx = srtp_pair()
    receiver = receiver_with(rx)
    inline = Payloads()
    fast = InboundRtp(receiver, inline)
    shapes = [
        packet(100, b"\x01plain", mid=None),  # no extension
        packet(101, b"\x02ext"),  # RFC 8285 one-byte extensions
        packet(102, b"\x03csrc", csrc=[1, 2, 3]),
        packet(103, b"\x04padded", padding=7),
        packet(104, b"\x05all", csrc=[9], padding=4),
    ]
    sent = [tx.protect(p) for p in shapes]
    assert all(fast(p) for p in sent)
    assert inline.got == [(100, b"\x01plain"), (101, b"\x02ext"), (102, b"\x03csrc"),
                          (103, b"\x04padded"), (104, b"\x05all")]
    # aiortc's receive statistics and the transport's counters saw them all
    stats = receiver._RTCRtpReceiver__remote_streams[SSRC]
    assert stats.packets_received == 5 and stats.max_seq == 104 and stats.packets_lost == 0
    assert receiver.transport._RTCDtlsTransport__rx_packets == 5
    assert receiver.transport._RTCDtlsTransport__rx_bytes == sum(map(len, sent))
    assert fast.packets == 5


def test_inbound_fast_path_leaves_the_rest_to_aioice():
    tx, rx = srtp_pair()
    inline = Payloads()
    fast = InboundRtp(receiver_with(rx), inline)
    rtcp_rr = bytes([0x81, 201, 0, 1]) + SSRC.to_bytes(4, "big")
    others = [
        b"\x00\x01\x00\x00" + bytes(16),  # STUN binding request
        bytes([22, 0xFE, 0xFD]) + bytes(10),  # DTLS handshake record
        tx.protect_rtcp(rtcp_rr),  # SRTCP
        tx.protect(packet(1, b"x", ssrc=0x55555555)),  # an SSRC aiortc has not routed
        tx.protect(packet(2, b"x", pt=0)),  # another payload type
        b"\x80",  # too short to be RTP
    ]
    assert [fast(d) for d in others] == [False] * len(others)
    assert inline.got == []


def test_inbound_fast_path_drops_what_srtp_refuses():
    tx, rx = srtp_pair()
    inline = Payloads()
    fast = InboundRtp(receiver_with(rx), inline)
    good = tx.protect(packet(7, b"\x07voice"))
    forged = bytearray(good)
    forged[-1] ^= 0xFF  # the authentication tag no longer matches
    assert fast(bytes(forged)) is True  # taken, and dropped as aiortc drops it
    assert inline.got == []
    assert fast(good) is True and inline.got == [(7, b"\x07voice")]
    assert fast(good) is True and len(inline.got) == 1  # a replay is refused by SRTP too


# -- the pump --------------------------------------------------------------


class Frames:
    """A frame source on the grid: frame n is due at tick0 + n."""

    def __init__(self, tick0: int, frames: int = 1000, fail_at: int | None = None) -> None:
        self.tick0, self.index, self.frames, self.fail_at = tick0, 0, frames, fail_at
        self.readyState = "live"

    def due_tick(self, now: float) -> int:
        if self.index >= self.frames:
            self.readyState = "ended"
        return self.tick0 + self.index

    def next_frame(self) -> tuple[bytes, int]:
        if self.index == self.fail_at:
            raise ValueError("a bug in this stream")
        self.index += 1
        return bytes([0xF8, self.index % 256]), self.index - 1

    def stop(self) -> None:
        self.readyState = "ended"


def sender_with(tx: pylibsrtp.Session, sent: list[bytes]) -> Obj:
    pair = Obj(protocol=Obj(transport=Obj(sendto=lambda data, addr: sent.append(data))),
               remote_addr=("127.0.0.1", 9))
    dtls = Obj(_state=State.CONNECTED, _tx_srtp=tx, _RTCDtlsTransport__tx_bytes=0,
               _RTCDtlsTransport__tx_packets=0,
               transport=Obj(_connection=Obj(_nominated={1: pair})))
    return Obj(transport=dtls, _enabled=True, _ssrc=SSRC, _RTCRtpSender__mid="0",
               _RTCRtpSender__rtp_header_extensions_map=extensions_map(),
               _RTCRtpSender__ntp_timestamp=0, _RTCRtpSender__rtp_timestamp=0,
               _RTCRtpSender__octet_count=0, _RTCRtpSender__packet_count=0)


def pumped(frames: int = 1000):
    """A pump on the real clock with one stream of ``frames`` frames due from
    the next tick: (pump, stream, its source, its sender, the datagrams it
    sent, the SRTP session that reads them)."""
    tx, rx = srtp_pair()
    sent: list[bytes] = []
    grid = FrameGrid()
    pump = rtp_pump.RtpPump(grid)
    sender = sender_with(tx, sent)
    source = Frames(grid.tick_at(grid.clock()) + 1, frames=frames)
    stream = rtp_pump.RtpStream(sender, source, PT)
    pump.add(stream)
    return pump, stream, source, sender, sent, rx


async def test_pump_writes_what_aiortc_writes_and_keeps_rtcp_counters():
    pump, stream, _, sender, sent, rx = pumped(frames=10)
    await asyncio.wait_for(stream.ended, 2)
    packets = [RtpPacket.parse(rx.unprotect(d), extensions_map()) for d in sent]
    assert [p.payload for p in packets] == [bytes([0xF8, i % 256]) for i in range(1, 11)]
    seq0, ts0 = packets[0].sequence_number, packets[0].timestamp
    assert seq0 < 0x8000  # aiortc's choice: no early wrap-around
    assert [p.sequence_number for p in packets] == [seq0 + i for i in range(10)]
    assert [p.timestamp for p in packets] == [ts0 + 960 * i for i in range(10)]
    assert all(p.ssrc == SSRC and p.payload_type == PT and p.marker == 1 for p in packets)
    assert all(p.extensions.mid == "0" and p.extensions.abs_send_time is not None
               for p in packets)
    assert sender._RTCRtpSender__packet_count == 10
    assert sender._RTCRtpSender__octet_count == 20
    assert sender._RTCRtpSender__rtp_timestamp == packets[-1].timestamp
    assert sender.transport._RTCDtlsTransport__tx_packets == 10
    assert sender.transport._RTCDtlsTransport__tx_bytes == sum(map(len, sent))
    assert pump.late_frames == 0


async def test_pump_catches_up_after_a_stall_and_counts_late_frames():
    pump, stream, source, _, sent, _ = pumped()
    await asyncio.sleep(5 * FRAME_S)
    before = len(sent)
    time.sleep(0.2)  # the event loop itself is blocked, as a starved loop is
    await asyncio.sleep(2 * FRAME_S)
    due = (pump.grid.clock() // FRAME_S) - source.tick0
    assert len(sent) >= due - 1  # every frame due went out once the loop was back
    assert len(sent) - before >= 10
    assert pump.late_frames >= 5  # the ones more than 60 ms after their tick
    source.stop()
    await asyncio.wait_for(stream.ended, 1)


async def test_one_failing_stream_does_not_silence_the_others():
    tx, _ = srtp_pair()
    good: list[bytes] = []
    bad: list[bytes] = []
    grid = FrameGrid()
    pump = rtp_pump.RtpPump(grid)
    tick0 = grid.tick_at(grid.clock()) + 1
    failing = rtp_pump.RtpStream(sender_with(tx, bad), Frames(tick0, fail_at=3), PT)
    healthy = rtp_pump.RtpStream(sender_with(srtp_pair()[0], good), Frames(tick0, frames=8), PT)
    pump.add(failing)
    pump.add(healthy)
    await asyncio.wait_for(healthy.ended, 2)
    assert failing.ended.done() and len(bad) == 3
    assert len(good) == 8


async def test_pump_ends_a_stream_whose_transport_is_gone():
    pump, stream, _, sender, sent, _ = pumped()
    await asyncio.sleep(4 * FRAME_S)
    sender.transport._state = State.CLOSED
    await asyncio.wait_for(stream.ended, 1)
    count = len(sent)
    assert count >= 2
    await asyncio.sleep(3 * FRAME_S)
    assert len(sent) == count  # nothing is sent on a closed DTLS transport
    pump.remove(stream)


@pytest.mark.parametrize("missing", ["_RTCRtpSender__mid", "_RTCRtpSender__rtp_exited"])
def test_pump_leaves_an_unknown_aiortc_sender_alone(missing):
    sender = Obj(_RTCRtpSender__rtp_started=1, _RTCRtpSender__rtp_exited=1,
                 _RTCRtpSender__mid="0", _RTCRtpSender__rtp_header_extensions_map=1,
                 _run_rtp="aiortc's", _ssrc=1)
    delattr(sender, missing)
    assert rtp_pump.pump_sender(sender, Frames(0)) is False
    assert sender._run_rtp == "aiortc's"


def test_frame_grid_serves_a_new_event_loop():
    """A tick waited for on an event loop that then closed (a test's, or a
    restarted server's) still comes on the next loop: its timer died with
    the old loop."""
    grid = FrameGrid()

    async def abandon() -> int:
        tick = grid.tick_at(grid.clock()) + 10  # 200 ms ahead
        asyncio.ensure_future(grid.wait(tick))
        await asyncio.sleep(0)
        return tick

    tick = asyncio.run(abandon())  # closed with the wait pending

    async def again() -> None:
        await asyncio.wait_for(grid.wait(tick), 2)

    asyncio.run(again())
    assert grid.clock() >= tick * FRAME_S
