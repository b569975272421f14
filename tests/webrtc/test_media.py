"""The media path: the pieces alone on an injected clock (pacing without
drift, the output buffer events, clearing, inbound chunks, the Opus
round trip on real speech), then real speech through a call and back
(intact, no gaps, metered exactly) and a clear that silences the call at
once."""

from __future__ import annotations

import asyncio
import fractions
import time

import numpy as np

from tests.conftest import SLOW
from tests.webrtc.client import Client
from voxgate.proxy.webrtc.media import (
    FRAME_BYTES,
    FRAME_MS,
    FRAME_SAMPLES,
    FrameGrid,
    InboundAudio,
    OutputAudioTrack,
)
from voxgate.proxy.webrtc.opus import SILENCE_PACKET, OpusDecoder48, OpusVoiceEncoder

NO_VAD = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}


class FakeGrid(FrameGrid):
    """The frame grid on a fake clock: waiting moves the clock on."""

    def __init__(self) -> None:
        self.now = 100.0
        self.jitter = 0.0013  # every wake-up is late by this much
        super().__init__(clock=lambda: self.now)

    async def wait(self, tick: int) -> None:
        self.now = max(self.now, tick * FRAME_MS / 1000) + self.jitter


def pcm(samples: np.ndarray) -> bytes:
    return samples.astype("<i2").tobytes()


def aligned_snr_db(ref: np.ndarray, out: np.ndarray, max_lag: int) -> tuple[float, int]:
    """The best SNR of ``out`` against ``ref`` over lags 0..max_lag samples,
    with that lag."""
    ref, out = ref.astype(float), out.astype(float)
    best = (-99.0, 0)
    for lag in range(max_lag):
        n = min(len(ref), len(out) - lag)
        err = out[lag:lag + n] - ref[:n]
        snr = 10 * np.log10((ref[:n] ** 2).sum() / max((err ** 2).sum(), 1.0))
        best = max(best, (snr, lag))
    return best


def echo_lag(ref: np.ndarray, heard: np.ndarray) -> int:
    """Where ``ref`` starts in ``heard``, in samples (FFT cross-correlation)."""
    size = 1 << (len(heard) + len(ref)).bit_length()
    corr = np.fft.irfft(np.fft.rfft(heard, size) * np.conj(np.fft.rfft(ref, size)), size)
    return int(np.argmax(corr[:len(heard)]))


def window_lags(ref: np.ndarray, heard: np.ndarray, window: int = 24000,
                search: int = 9600) -> list[tuple[int, int, float]]:
    """For each loud half second of ``ref`` (48 kHz): (its start, its lag in
    ``heard`` (searched from 10 ms before to ``search`` samples after the
    previous window's), normalised correlation there)."""
    lag = echo_lag(ref, heard)
    out = []
    for start in range(0, len(ref) - window, window):
        seg = ref[start:start + window]
        if np.sqrt((seg ** 2).mean()) < 500:
            continue
        lo = start + lag - 480
        area = heard[lo:lo + window + search]
        corr = np.correlate(area, seg, "valid")
        k = int(np.argmax(corr))
        found = area[k:k + window]
        lag = lo + k - start
        out.append((start, lag,
                    float(corr[k] / np.sqrt((seg ** 2).sum() * (found ** 2).sum() + 1.0))))
    return out


def decode(packets) -> bytes:
    decoder = OpusDecoder48()
    return b"".join(decoder.decode(bytes(p)) for p in packets) + decoder.flush()


async def test_output_track_is_paced_without_drift():
    clock = FakeGrid()
    track = OutputAudioTrack(grid=clock)
    first = await track.recv()
    start = clock.now
    for _ in range(3000 - 1):  # one minute of 20 ms frames
        packet = await track.recv()
    # Opus packets in the 48 kHz RTP clock (RFC 7587 §4.1), 960 ticks apart
    assert packet.pts == 2999 * FRAME_SAMPLES and packet.time_base == fractions.Fraction(1, 48000)
    assert bytes(first) == SILENCE_PACKET  # idle: the canned silence frame
    # late wake-ups do not accumulate: the last frame is due 59.98 s after the first
    assert abs((clock.now - start) - 59.98) <= clock.jitter + 1e-9


async def test_output_buffer_events_and_clear():
    events: list[tuple[str, str | None]] = []
    track = OutputAudioTrack(on_event=lambda t, r: events.append((t, r)), grid=FakeGrid())
    tone = pcm(np.sin(np.arange(2400) / 5) * 8000)  # 100 ms at 24 kHz
    track.push(tone, "resp_1")
    track.audio_done("resp_1")
    packets = [await track.recv() for _ in range(8)]
    assert [e[0] for e in events] == ["output_audio_buffer.started",
                                      "output_audio_buffer.stopped"]
    heard = np.frombuffer(decode(packets), "<i2")
    assert np.abs(heard[:2400]).max() > 4000  # the tone came out
    assert np.abs(heard[-480:]).max() < 50  # silence when idle
    assert track.audio_frames_sent == 5
    events.clear()
    track.push(tone * 10, "resp_2")
    await track.recv()
    assert track.queued_ms == 1000 - 20
    assert track.clear() is True
    assert track.queued_ms == 0 and events[-1] == ("output_audio_buffer.cleared", "resp_2")
    assert bytes(await track.recv()) != b""
    assert track.clear() is False  # nothing left to clear: no event


async def test_tracks_share_the_frame_grid():
    """Tracks started at different times wait for the same 20 ms ticks of
    the real clock, and get there on time."""
    grid = FrameGrid()
    tracks = [OutputAudioTrack(grid=grid) for _ in range(20)]
    woken: list[list[float]] = [[] for _ in tracks]

    async def play(i: int) -> None:
        await asyncio.sleep(i * 0.0013)
        for _ in range(10):
            await tracks[i].recv()
            woken[i].append(time.monotonic())

    await asyncio.gather(*(play(i) for i in range(len(tracks))))
    ticks = {round(t / 0.02) for w in woken for t in w[1:]}
    assert len(ticks) <= 11 * SLOW  # 20 tracks, 9 frames each, on the same ~10 ticks
    late = max(t - round(t / 0.02) * 0.02 for w in woken for t in w[1:])
    assert late < 0.015 * SLOW


async def test_inbound_audio_cuts_exact_chunks_and_flushes_in_order():
    inbound = InboundAudio(chunk_ms=40)
    for i in range(51):  # 1.02 s of 20 ms frames of PCM16 24 kHz
        inbound.feed(bytes([i]) * FRAME_BYTES)
    taken: list[bytes] = []

    async def appender() -> None:
        while (chunk := await inbound.next()) is not None:
            await asyncio.sleep(0.001)  # an append that yields
            taken.append(chunk)

    task = asyncio.create_task(appender())
    await asyncio.sleep(0.05)
    assert len(taken) == 25  # the 51st frame waits for the next one
    await inbound.flush()  # returns once all 51 frames are handled, the short rest too
    assert len(taken) == 26 and all(len(c) == 1920 for c in taken[:25])  # 40 ms each
    assert taken[-1] == bytes([50]) * FRAME_BYTES
    assert b"".join(taken) == b"".join(bytes([i]) * FRAME_BYTES for i in range(51))
    inbound.feed(bytes(FRAME_BYTES * 2 - 64))  # 40 ms less the decoder's 32 samples
    await asyncio.sleep(0.01)
    assert len(taken[-1]) == FRAME_BYTES * 2 - 64  # sent at once, not held for a frame
    inbound.feed(bytes(FRAME_BYTES))
    inbound.end()
    await asyncio.wait_for(task, 1)
    assert len(taken[-1]) == FRAME_BYTES
    await inbound.flush()  # after the end: nothing left to wait for


def test_opus_round_trip_keeps_real_speech(speech_dir):
    """Provider PCM (24 kHz) → Opus encoded from 24 kHz → decoded at 48 kHz
    and resampled back: same length, and the waveform within 14 dB SNR."""
    from voxgate.voice.audio import load_pcm16

    speech = load_pcm16(speech_dir / "jfk.flac", 24000)
    speech = speech[: len(speech) // FRAME_BYTES * FRAME_BYTES]
    encoder = OpusVoiceEncoder(20)
    packets = [encoder.encode(speech[i:i + FRAME_BYTES], i // FRAME_BYTES)
               for i in range(0, len(speech), FRAME_BYTES)]
    assert [encoder.packet(p, i).pts for i, p in enumerate(packets[:3])] == [0, 960, 1920]
    assert sum(len(bytes(p)) for p in packets) * 8 / (len(packets) * 0.02) < 40_000  # bit/s
    out = decode(packets)
    assert len(out) == len(speech)  # nothing lost or added: metering stays exact
    snr, lag = aligned_snr_db(np.frombuffer(speech, "<i2"), np.frombuffer(out, "<i2"), 400)
    assert snr > 14, (snr, lag)
    assert lag < 200  # < 8.3 ms codec delay


async def test_real_speech_through_a_call_comes_back_intact(make_server, rtc_settings, http,
                                                            jfk48):
    """jfk.flac (11 s) played into a call whose provider echoes every
    appended chunk: the client hears all of it back, in order, with no gap,
    and the session meters exactly what was sent and played."""
    server = await make_server(**rtc_settings)
    resp = await http.post(server.url + "/v1/realtime/client_secrets", json={"session": NO_VAD},
                           headers={"Authorization": f"Bearer {server.key}"})
    ek = (await resp.json())["value"]
    client = Client(server.url, jfk48)
    try:
        await client.connect(http, ek, params={"voxgate_fault": "echo"})
        await client.wait_event("session.created", 10)
        await asyncio.wait_for(client.track.finished.wait(), 20 * SLOW)
        await asyncio.sleep(0.5)  # the last frames' echo
        client.send({"type": "input_audio_buffer.commit"})
        await client.wait_event("response.done", 10)
        await client.wait_event("output_audio_buffer.stopped", 10)
        await asyncio.sleep(0.3)  # the last frames, through the client's jitter buffer
        r = await http.post(server.url + client.location + "/hangup",
                            headers={"Authorization": f"Bearer {ek}"})
        assert r.status == 200
    finally:
        await client.close()
    sent_ms = client.track.index * 20
    frames = client.received
    # continuous media: every RTP timestamp 20 ms after the last
    pts = np.array([f[1] for f in frames])
    assert (np.diff(pts) == 960).all(), np.unique(np.diff(pts))
    heard = np.concatenate([f[2] for f in frames]).astype(float)
    ref = np.frombuffer(jfk48, "<i2").astype(float)
    lags = window_lags(ref, heard)
    # all of it came back, in order: every loud half second of the speech is
    # found where it should be, and nothing is missing at the end
    assert all(corr > 0.8 for _, _, corr in lags), lags
    assert len(heard) >= lags[-1][1] + len(ref) - 960
    # no gap: the audio is never held back by more than 60 ms (the bench's
    # underrun) against its first lag
    drift_ms = (max(lag for _, lag, _ in lags) - lags[0][1]) / 48
    assert drift_ms <= 60 * SLOW, lags
    # metering: audio in = what the client sent, audio out = what the provider sent back
    m = (await server.session(client.session_id)).measurements
    assert abs(m.audio_in_ms - sent_ms) <= 20, (m.audio_in_ms, sent_ms)
    assert m.audio_out_ms == m.audio_in_ms


async def test_clear_silences_the_call_at_once(make_server, rtc_settings, http, jfk48):
    """``output_audio_buffer.clear`` while a reply is queued (the path of
    barge-in and ``response.cancel``): the queue is dropped at once and the
    client hears silence from the next frames on."""
    from voxgate.proxy.webrtc import CALLS

    server = await make_server(**rtc_settings)
    resp = await http.post(server.url + "/v1/realtime/client_secrets", json={"session": NO_VAD},
                           headers={"Authorization": f"Bearer {server.key}"})
    ek = (await resp.json())["value"]
    client = Client(server.url, jfk48[: 48000 * 2 * 4], then_silence=True)
    try:
        await client.connect(http, ek)
        await client.wait_event("session.created", 10)
        await asyncio.wait_for(client.track.finished.wait(), 10 * SLOW)
        await asyncio.sleep(0.3)
        client.send({"type": "input_audio_buffer.commit"})
        client.send({"type": "response.create"})
        await client.wait_event("output_audio_buffer.started", 30)
        call = server.app[CALLS][client.call_id]
        for _ in range(200):  # let the reply queue up
            if call.track.queued_ms > 1000:
                break
            await asyncio.sleep(0.02)
        queued = call.track.queued_ms
        assert queued > 500, queued
        client.send({"type": "output_audio_buffer.clear"})
        await client.wait_event("output_audio_buffer.cleared", 5)
        assert call.track.queued_ms == 0
        cleared_at = time.monotonic()
        await asyncio.sleep(1.0)
        # what was already on the way: a frame in flight and the client's
        # 80 ms jitter buffer (aiortc's), decoded in its own thread
        after = [f for f in client.received if f[0] > cleared_at + 0.3 * SLOW]
        assert len(after) > 20  # the call goes on, in silence
        assert max(np.abs(f[2]).max() for f in after) < 200
    finally:
        await client.close()


def test_announce_address_rewrites_host_candidates_only():
    from voxgate.proxy.webrtc.sdp import announce_address

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

    from voxgate.proxy.webrtc import ice as rtc_ice

    with rtc_ice.host_addresses(["127.0.0.1"]):
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=False, use_ipv6=True) == []
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)


def _stats(report, kind: str) -> list:
    return [s for s in report.values() if s.type == kind]


async def test_rtp_both_ways_at_the_rtp_layer_keeps_rtcp_and_stats(make_server, rtc_settings,
                                                                    http, jfk48):
    """The browser's RTP goes from the ICE datagram callback to the decoder
    (``rtp_audio.InboundRtp``) and voxgate's RTP leaves from the process's
    pump (``rtp_pump.RTP_PUMP``), and both still count as aiortc counts: the
    packets each side sent are the packets the other received (receive
    statistics, transport counters), RTCP sender and receiver reports cross
    both ways, and the pump lets go of the stream when the call ends."""
    from voxgate.proxy.webrtc import CALLS
    from voxgate.proxy.webrtc.rtp_pump import RTP_PUMP

    server = await make_server(**rtc_settings)
    resp = await http.post(server.url + "/v1/realtime/client_secrets", json={"session": NO_VAD},
                           headers={"Authorization": f"Bearer {server.key}"})
    ek = (await resp.json())["value"]
    client = Client(server.url, jfk48[: 48000 * 2 * 3], then_silence=True)
    try:
        await client.connect(http, ek, params={"voxgate_fault": "echo"})
        await client.wait_event("session.created", 10)
        call = server.app[CALLS][client.call_id]
        assert RTP_PUMP.streams >= 1
        await asyncio.wait_for(client.track.finished.wait(), 10 * SLOW)
        await asyncio.sleep(2.5)  # RTCP reports go every 0.5-1.5 s
        vg_sender = call.pc.getSenders()[0]
        vg_receiver = next(t.receiver for t in call.pc.getTransceivers())
        c_sender = client.pc.getSenders()[0]
        c_receiver = next(t.receiver for t in client.pc.getTransceivers())
        vg_out = _stats(await vg_sender.getStats(), "outbound-rtp")[0]
        c_in = _stats(await c_receiver.getStats(), "inbound-rtp")[0]
        c_out = _stats(await c_sender.getStats(), "outbound-rtp")[0]
        vg_in = _stats(await vg_receiver.getStats(), "inbound-rtp")[0]
        # voxgate → client: every packet the pump sent arrived (a few in flight)
        assert vg_out.packetsSent > 100 and 0 <= vg_out.packetsSent - c_in.packetsReceived <= 3
        assert vg_out.bytesSent > vg_out.packetsSent * 3
        # client → voxgate: all but the first packet or two took the fast path,
        # and aiortc's receive statistics saw every one of them
        assert 0 <= c_out.packetsSent - vg_in.packetsReceived <= 3
        assert call._rtp_in is not None and call._rtp_in.packets >= vg_in.packetsReceived - 3
        assert vg_in.packetsLost == 0
        # RTCP: voxgate's sender reports carry the pump's counts to the client,
        # the client's receiver reports come back
        remote_out = _stats(await c_receiver.getStats(), "remote-outbound-rtp")
        assert remote_out and 0 < remote_out[0].packetsSent <= vg_out.packetsSent
        remote_in = _stats(await vg_sender.getStats(), "remote-inbound-rtp")
        assert remote_in and remote_in[0].packetsLost == 0
        transport = _stats(await call.pc.getStats(), "transport")[0]
        assert transport.packetsReceived >= vg_in.packetsReceived
        assert transport.packetsSent >= vg_out.packetsSent
        streams = RTP_PUMP.streams
        async with http.get(server.url + "/metrics") as resp:
            text = await resp.text()
        assert f"voxgate_webrtc_rtp_streams {float(streams)}" in text
        assert "# TYPE voxgate_webrtc_late_frames_total counter" in text
        r = await http.post(server.url + client.location + "/hangup",
                            headers={"Authorization": f"Bearer {ek}"})
        assert r.status == 200
        for _ in range(100):
            if RTP_PUMP.streams < streams:
                break
            await asyncio.sleep(0.02)
        assert RTP_PUMP.streams == streams - 1  # the call's stream is gone
        assert call.track.readyState == "ended"
    finally:
        await client.close()
