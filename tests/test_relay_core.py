"""The relay core (``voxgate.proxy.relay``) fed typed events, with no socket,
no task and no clock, as ``websockets`` tests its sans-I/O ``Protocol``:
each test feeds events with their own timestamps and checks the actions
returned and what the (real) session meter measured."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from voxgate.errors import UpstreamError, UpstreamRefused
from voxgate.metering.meter import SessionMeter
from voxgate.proxy.relay import (
    CLIENT,
    CLOSING,
    SERVER,
    UPSTREAM,
    Accepted,
    AudioDone,
    ClearAudio,
    ClientAudio,
    ClientClosed,
    ClientMessage,
    CloseClient,
    CloseUpstream,
    End,
    Fence,
    Finish,
    FlushInput,
    Heard,
    Ping,
    PlayAudio,
    RelayConfig,
    RelayCore,
    SendClient,
    SendRateLimits,
    SendUpstream,
    Tick,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamMessage,
    UpstreamOpened,
)
from voxgate.proxy.upstream import PROVIDER_LOST, PROVIDER_TIMEOUT

MODEL = "gpt-realtime"


@dataclass
class Lease:
    valid_until: float = math.inf  # monotonic s


def make(**config: Any) -> tuple[RelayCore, SessionMeter, Lease]:
    """A core accepted at t = 1000 ms with its upstream open at 1010 ms."""
    meter, lease = SessionMeter(0.0), Lease()
    core = RelayCore(RelayConfig(model=config.pop("model", MODEL),
                                 max_bytes=config.pop("max_bytes", 16_384), **config), meter, lease)
    assert core.feed(Accepted(1000.0)) == []
    opened = core.feed(UpstreamOpened(1010.0))
    assert all(isinstance(a, SendUpstream) for a in opened)
    return core, meter, lease


def ev(**event: Any) -> str:
    return orjson.dumps(event).decode()


def b64(nbytes: int) -> str:
    return base64.b64encode(bytes(nbytes)).decode()


def error_of(action: Any) -> dict[str, Any]:
    assert isinstance(action, SendClient) and isinstance(action.data, str), action
    event = orjson.loads(action.data)
    assert event["type"] == "error", event
    return event["error"]


# -- client → upstream ---------------------------------------------------------


def test_a_client_event_is_forwarded_as_sent_and_metered():
    core, meter, _ = make()
    data = ev(type="input_audio_buffer.append", audio=b64(4800))  # 100 ms of PCM16 24 kHz
    assert core.feed(ClientMessage(1100.0, data)) == [SendUpstream(data)]
    m = meter.measurements()
    assert (m.events_in, m.bytes_in, m.audio_in_ms) == (1, len(data), 100.0)
    assert m.event_counts == {"input_audio_buffer.append": 1}


@pytest.mark.parametrize("data, code", [
    ("{not json", "invalid_json"),
    (ev(no_type=1), "invalid_event"),
    (ev(type="Not A Type"), "invalid_event"),
    (ev(type="input_audio_buffer.append", audio="%%%"), "invalid_base64"),
    (b"\x00binary", "invalid_event"),
    (ev(type="response.create", pad="x" * 17_000), "message_too_large"),
])
def test_bad_client_input_is_answered_to_its_sender_and_not_forwarded(data, code):
    core, meter, _ = make()
    sender = ("sideband", 1)
    actions = core.feed(ClientMessage(1100.0, data, reply=sender))
    assert len(actions) == 1 and actions[0].to == sender
    err = error_of(actions[0])
    assert err["type"] == "invalid_request_error" and err["code"] == code
    m = meter.measurements()
    assert (m.events_in, m.client_errors, m.bytes_in) == (0, 1, len(data))
    assert not core.done  # the session goes on


def test_an_unknown_well_formed_type_is_relayed_and_counted_as_other():
    core, meter, _ = make()
    data = ev(type="conversation.future_thing")
    assert core.feed(ClientMessage(1100.0, data)) == [SendUpstream(data)]
    assert meter.measurements().event_counts == {"other": 1}


def test_a_session_update_cannot_change_the_pinned_model():
    core, _, _ = make()
    actions = core.feed(ClientMessage(1100.0, ev(type="session.update",
                                                 session={"model": "other", "instructions": "hi"})))
    assert len(actions) == 1 and isinstance(actions[0], SendUpstream)
    assert orjson.loads(actions[0].data)["session"] == {"instructions": "hi"}
    same = ev(type="session.update", session={"model": MODEL})
    assert core.feed(ClientMessage(1101.0, same)) == [SendUpstream(same)]


# -- upstream → client ---------------------------------------------------------


def test_upstream_events_go_to_the_client_metered_with_their_own_time():
    core, meter, _ = make()
    created = ev(type="session.created", session={"id": "sess_up"})
    assert core.feed(UpstreamMessage(1250.0, created)) == [SendClient(created), SendRateLimits()]
    m = meter.measurements()
    assert m.connected and m.connect_ms == 250.0 and m.upstream_ready_ms is None
    delta = ev(type="response.output_audio.delta", delta=b64(9600), response_id="r1")
    assert core.feed(UpstreamMessage(1300.0, delta)) == [SendClient(delta)]
    done = ev(type="response.done", response={"id": "r1", "status": "completed",
                                               "usage": {"total_tokens": 7}})
    assert core.feed(UpstreamMessage(1400.0, done)) == [SendClient(done), SendRateLimits()]
    assert (m.audio_out_ms, m.responses_completed, m.total_tokens) == (200.0, 1, 7)
    assert core.feed(UpstreamMessage(1401.0, b"\x01\x02")) == [SendClient(b"\x01\x02")]
    assert m.event_counts["binary"] == 1


def test_the_providers_rate_limits_are_dropped():
    core, meter, _ = make()
    assert core.feed(UpstreamMessage(1100.0, ev(type="rate_limits.updated", rate_limits=[]))) == []
    assert meter.measurements().events_out == 0


def test_an_ephemeral_keys_session_is_folded_into_session_created():
    meter = SessionMeter(0.0)
    core = RelayCore(RelayConfig(model=MODEL, max_bytes=4096,
                                 key_session={"model": "x", "instructions": "be brief"}),
                     meter, Lease())
    core.feed(Accepted(0.0))
    (update,) = core.feed(UpstreamOpened(5.0))
    assert isinstance(update, SendUpstream)
    sent = orjson.loads(update.data)
    assert sent["session"] == {"type": "realtime", "instructions": "be brief"}
    assert core.feed(UpstreamMessage(10.0, ev(type="session.created", event_id="evt_1",
                                              session={"id": "s"}))) == []
    assert core.feed(UpstreamMessage(11.0, ev(type="conversation.created"))) == []  # held
    actions = core.feed(UpstreamMessage(12.0, ev(type="session.updated", session={
        "id": "s", "instructions": "be brief"})))
    assert [type(a) for a in actions] == [SendClient, SendRateLimits, SendClient]
    first = orjson.loads(actions[0].data)
    assert first == {"type": "session.created", "event_id": "evt_1",
                     "session": {"id": "s", "instructions": "be brief"}}
    assert orjson.loads(actions[2].data)["type"] == "conversation.created"
    assert meter.measurements().connect_ms == 12.0


# -- ends --------------------------------------------------------------------------


@pytest.mark.parametrize("code, wire", [(1000, 1000), (4001, 4001), (1006, 1000), (None, 1000)])
def test_a_client_close_closes_the_upstream_with_its_code(code, wire):
    core, meter, _ = make()
    actions = core.feed(ClientClosed(2000.0, code))
    assert actions == [CloseUpstream(wire, "client closed"), Finish(), CloseClient(wire, "")]
    m = meter.measurements()
    assert (m.closed_by, m.close_code, m.duration_ms) == (CLIENT, code, 1000.0)
    assert core.done and core.feed(ClientMessage(2001.0, ev(type="response.create"))) == []


def test_a_client_gone_before_the_upstream_opened_has_nothing_upstream_to_close():
    meter = SessionMeter(0.0)
    core = RelayCore(RelayConfig(model=MODEL, max_bytes=4096), meter, Lease())
    core.feed(Accepted(0.0))
    assert core.feed(ClientClosed(30.0, 1001)) == [Finish(), CloseClient(1001, "")]


def test_a_provider_drop_reaches_the_client_as_an_error_and_1011():
    core, meter, _ = make()
    actions = core.feed(UpstreamClosed(3000.0, 1006, PROVIDER_LOST))
    assert actions[:2] == [CloseUpstream(1000, ""), Finish()]
    err = error_of(actions[2])
    assert err["code"] == "upstream_closed" and PROVIDER_LOST in err["message"]
    assert actions[3] == CloseClient(1011, "upstream connection lost")
    m = meter.measurements()
    assert (m.closed_by, m.close_code, m.close_reason) == (UPSTREAM, 1006, PROVIDER_LOST)
    assert m.provider_errors == 1


@pytest.mark.parametrize("code", [1000, 1001])
def test_a_normal_upstream_close_is_passed_on(code):
    core, meter, _ = make()
    assert core.feed(UpstreamClosed(3000.0, code, None)) == [
        CloseUpstream(1000, ""), Finish(), CloseClient(code, "upstream closed the session")]
    assert meter.measurements().provider_errors == 0


def test_a_frame_past_the_lease_is_fenced_then_closed_with_lease_expired_and_1011():
    core, meter, lease = make()
    lease.valid_until = 1.5  # s: 1500 ms
    assert core.feed(ClientMessage(1499.0, ev(type="response.create")))  # still valid
    assert core.feed(ClientMessage(1500.0, ev(type="response.create"))) == [Fence()]
    assert core.feed(UpstreamMessage(1501.0, ev(type="response.done"))) == [Fence()]
    assert meter.measurements().events_in == 1 and meter.measurements().events_out == 0
    # the gateway's fence closes the session through ActiveSession.close
    actions = core.feed(End(1502.0, SERVER, 1011, "session lease expired", explain=True))
    assert error_of(actions[0])["code"] == "lease_expired"
    assert actions[1:] == [CloseClient(1011, "session lease expired"),
                           CloseUpstream(1011, "session lease expired"), Finish()]
    assert (meter.measurements().closed_by, meter.measurements().close_code) == (SERVER, 1011)


def test_shutdown_says_service_unavailable_first():
    core, _, _ = make()
    actions = core.feed(End(1600.0, SERVER, 1001, "shutdown", explain=True))
    assert error_of(actions[0])["code"] == "service_unavailable"
    assert actions[1] == CloseClient(1001, "shutdown")


@pytest.mark.parametrize("error, code, provider_errors", [
    (UpstreamRefused("unknown model"), 1008, 0), (UpstreamError("cannot reach"), 1011, 1)])
def test_an_upstream_that_cannot_be_opened(error, code, provider_errors):
    meter = SessionMeter(0.0)
    core = RelayCore(RelayConfig(model=MODEL, max_bytes=4096), meter, Lease())
    core.feed(Accepted(0.0))
    actions = core.feed(UpstreamFailed(40.0, error))
    assert error_of(actions[0])["message"] == error.message
    assert actions[1:] == [CloseClient(code, error.message), Finish()]
    m = meter.measurements()
    assert (m.closed_by, m.close_code, m.provider_errors, m.connected) == (
        SERVER, code, provider_errors, False)


# -- timers ----------------------------------------------------------------------


def test_idle_timeout_and_maximum_duration():
    core, meter, _ = make(idle_timeout_ms=500.0, max_session_ms=10_000.0)
    assert core.next_timer_ms() == 1500.0
    core.feed(ClientMessage(1400.0, ev(type="response.create")))
    assert core.next_timer_ms() == 1900.0
    assert core.feed(Tick(1800.0)) == []
    actions = core.feed(Tick(1900.0))
    assert actions[0] == CloseClient(1000, "idle timeout") and isinstance(actions[-1], CLOSING)
    assert meter.measurements().close_reason == "idle timeout"
    core, meter, _ = make(max_session_ms=2000.0)
    actions = core.feed(Tick(3000.0))
    assert actions[0] == SendClient(actions[0].data)
    assert '"code":"session_expired"' in actions[0].data
    assert '"Your session hit the maximum duration of 2 seconds."' in actions[0].data
    assert actions[1] == CloseClient(1000, "max_session_s")
    assert (meter.measurements().closed_by, meter.measurements().close_reason) == ("server", "max_session_s")
    assert core.next_timer_ms() is None


def test_keepalive_pings_a_quiet_side_and_ends_on_an_unanswered_ping():
    core, meter, _ = make(ping_ms=1000.0)
    core.feed(UpstreamMessage(1900.0, ev(type="session.created", session={})))
    assert core.feed(Tick(2000.0)) == [Ping(CLIENT)]  # the upstream spoke 100 ms ago
    core.feed(Heard(2100.0, CLIENT))  # its pong
    assert core.feed(Tick(3000.0)) == [Ping(UPSTREAM)]
    actions = core.feed(Tick(4000.0))  # the client's pong came; the upstream's did not
    assert actions[:2] == [CloseUpstream(1000, ""), Finish()]
    assert actions[-1] == CloseClient(1011, "upstream connection lost")
    m = meter.measurements()
    assert (m.closed_by, m.close_code) == (UPSTREAM, 1006)
    assert m.close_reason.startswith(PROVIDER_TIMEOUT + ": no pong in 1.0 s")


# -- media mode (WebRTC, phone) ------------------------------------------------------


def test_media_mode_plays_audio_and_owns_the_output_buffer():
    core, meter, _ = make(media=True, rewrite_session=lambda s: {k: v for k, v in s.items()
                                                                 if k != "audio"})
    created = ev(type="session.created", session={})
    assert core.feed(UpstreamMessage(1300.0, created)) == [SendClient(created), SendRateLimits()]
    m = meter.measurements()
    assert (m.upstream_ready_ms, m.connect_ms) == (300.0, None)  # latency: media_ready's
    meter.media_ready(1350.0)
    assert m.connect_ms == 350.0
    core.feed(UpstreamMessage(1400.0, ev(type="response.created", response={"id": "r1"})))
    pcm = bytes(range(200)) * 24
    assert core.feed(UpstreamMessage(1401.0, ev(type="response.output_audio.delta",
                                                response_id="r1", delta=base64.b64encode(
                                                    pcm).decode()))) == [PlayAudio(pcm, "r1")]
    assert m.audio_out_ms == 100.0
    assert core.feed(ClientMessage(1402.0, ev(type="output_audio_buffer.clear"))) == [
        ClearAudio(), SendUpstream('{"type":"response.cancel"}')]
    # the cleared response's remaining audio is dropped
    assert core.feed(UpstreamMessage(1403.0, ev(type="response.output_audio.delta",
                                                response_id="r1", delta=b64(480)))) == []
    assert core.feed(UpstreamMessage(1404.0, ev(type="input_audio_buffer.speech_started"))) == [
        ClearAudio(), SendClient(ev(type="input_audio_buffer.speech_started"))]
    done = ev(type="response.done", response={"id": "r1", "status": "cancelled"})
    assert core.feed(UpstreamMessage(1405.0, done)) == [
        AudioDone("r1"), SendClient(done), SendRateLimits()]
    assert core.feed(UpstreamMessage(1406.0, ev(type="output_audio_buffer.stopped"))) == []
    commit = ev(type="input_audio_buffer.commit")
    assert core.feed(ClientMessage(1407.0, commit)) == [FlushInput(), SendUpstream(commit)]
    (update,) = core.feed(ClientMessage(1408.0, ev(type="session.update", session={
        "model": "other", "audio": {"input": {"format": {"type": "audio/pcmu"}}}})))
    assert orjson.loads(update.data)["session"] == {}
    (append,) = core.feed(ClientAudio(1409.0, bytes(1920)))  # 40 ms of PCM16 24 kHz
    assert orjson.loads(append.data) == {"type": "input_audio_buffer.append", "audio": b64(1920)}
    assert m.audio_in_ms == 40.0
    assert core.feed(UpstreamMessage(1410.0, b"\x00")) == []  # binary: metered only
