"""The media pieces alone, on an injected clock: pacing without drift, the
output buffer events, clearing, and the inbound resampling."""

from __future__ import annotations

import fractions

import av
import numpy as np

from voxgate.proxy.media import FRAME_SAMPLES, InboundAudio, OutputAudioTrack


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.jitter = 0.0013  # every wake-up is late by this much

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + self.jitter


async def test_output_track_is_paced_without_drift():
    clock = FakeClock()
    track = OutputAudioTrack(clock=clock, sleep=clock.sleep)
    first = await track.recv()
    start = clock.now
    for _ in range(3000 - 1):  # one minute of 20 ms frames
        frame = await track.recv()
    assert frame.pts == 2999 * FRAME_SAMPLES and frame.sample_rate == 48000
    assert first.samples == FRAME_SAMPLES
    # late wake-ups do not accumulate: the last frame is due 59.98 s after the first
    assert abs((clock.now - start) - 59.98) <= clock.jitter + 1e-9


async def test_output_buffer_events_and_clear():
    clock = FakeClock()
    events: list[tuple[str, str | None]] = []
    track = OutputAudioTrack(on_event=lambda t, r: events.append((t, r)), clock=clock,
                             sleep=clock.sleep)
    tone = (np.sin(np.arange(2400) / 5) * 8000).astype("<i2").tobytes()  # 100 ms at 24 kHz
    track.push(tone, "resp_1")
    track.audio_done("resp_1")
    frames = [await track.recv() for _ in range(8)]
    assert [e[0] for e in events] == ["output_audio_buffer.started",
                                      "output_audio_buffer.stopped"]
    assert any(np.any(f.to_ndarray()) for f in frames[:4])
    assert not np.any(frames[-1].to_ndarray())  # silence when idle
    events.clear()
    track.push(tone * 10, "resp_2")
    await track.recv()
    assert track.queued_ms > 800
    assert track.clear() is True
    assert track.queued_ms == 0 and events[-1] == ("output_audio_buffer.cleared", "resp_2")
    assert not np.any((await track.recv()).to_ndarray())
    assert track.clear() is False  # nothing left to clear: no event


def test_inbound_audio_resamples_48k_stereo_to_24k_mono_chunks():
    inbound = InboundAudio(chunk_ms=40)
    total_in = 0
    for i in range(50):  # 1 s of 20 ms stereo frames, as aiortc's Opus decoder gives
        samples = np.zeros((1, 960 * 2), dtype="<i2")
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = i * 960
        frame.time_base = fractions.Fraction(1, 48000)
        inbound.feed(frame)
        total_in += 960
    chunks = inbound.chunks()
    assert all(len(c) == 1920 for c in chunks)  # 40 ms of PCM16 at 24 kHz
    produced = sum(map(len, chunks)) + len(inbound.rest())
    assert abs(produced / 2 - total_in / 2) <= 64  # 24 000 samples, minus filter delay


def test_announce_address_rewrites_host_candidates_only():
    from voxgate.proxy.rtc_sdp import announce_address

    sdp = "\r\n".join([
        "v=0", "m=audio 50000 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 10.0.0.5",
        "a=candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host",
        "a=candidate:2 1 udp 16777215 198.51.100.9 61000 typ relay raddr 10.0.0.5 rport 50000",
        "",
    ])
    out = announce_address(sdp, "203.0.113.7")
    assert "c=IN IP4 203.0.113.7" in out
    assert "a=candidate:1 1 udp 2130706431 203.0.113.7 50000 typ host" in out
    assert "198.51.100.9 61000 typ relay raddr 10.0.0.5" in out
    assert announce_address(sdp, "") == sdp


def test_host_addresses_are_scoped_to_the_context():
    import aioice.ice

    from voxgate.proxy import rtc_ice

    with rtc_ice.host_addresses(["127.0.0.1"]):
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=False, use_ipv6=True) == []
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
