"""Calls that go wrong: the upstream drops, the provider is slow to start,
ICE never connects. Each ends the call and gets its verdict."""

from __future__ import annotations

import asyncio

from tests.conftest import SLOW, free_port
from tests.webrtc.client import Client
from tests.webrtc.test_calls import assert_nothing_left, mint
from voxgate.proxy.upstream import PROVIDER_LOST


async def test_upstream_drop_ends_the_call(make_server, rtc_settings, http):
    server = await make_server(**rtc_settings)
    ek = await mint(http, server)
    client = Client(server.url, b"")
    client.base_url = server.url  # the fault goes in the calls URL query
    try:
        sdp = await client.offer()
        r = await http.post(server.url + "/v1/realtime/calls?voxgate_fault=drop:700", data=sdp,
                            headers={"Authorization": f"Bearer {ek['value']}",
                                     "Content-Type": "application/sdp"})
        assert r.status == 201
        from aiortc import RTCSessionDescription

        await client.pc.setRemoteDescription(RTCSessionDescription(await r.text(), "answer"))
        await client.wait_event("session.created", 10)
        await asyncio.wait_for(client.closed.wait(), 10 * SLOW)
        record = await server.session(r.headers["X-Voxgate-Session-Id"])
    finally:
        await client.close()
    m = record.measurements
    assert m.closed_by == "upstream" and m.close_code not in (1000, 1001)
    assert record.reason == "provider_error", record.rule
    await assert_nothing_left(server)


async def test_provider_eof_mid_call_is_a_lost_connection(make_server, rtc_settings, http):
    """The provider answers one response, then its TCP connection ends with
    no close frame: the call is recorded 1006 / upstream / "provider
    connection lost", and the client's data channel gets an ``error``
    event before the call ends."""
    server = await make_server(**rtc_settings)
    ek = await mint(http, server)
    client = Client(server.url, b"")
    try:
        await client.connect(http, ek["value"], params={"voxgate_fault": "eof"})
        await client.wait_event("session.created", 10)
        await asyncio.wait_for(client.opened.wait(), 10 * SLOW)
        client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = await client.wait_event("response.done", 30)
        err = await client.wait_event("error", 10)
        await asyncio.wait_for(client.closed.wait(), 10 * SLOW)
        record = await server.session(client.session_id)
    finally:
        await client.close()
    assert done["response"]["status"] == "completed"
    assert (err["error"]["type"], err["error"]["code"]) == ("server_error", "upstream_closed")
    assert PROVIDER_LOST in err["error"]["message"]
    m = record.measurements
    assert (m.closed_by, m.close_code, m.close_reason) == ("upstream", 1006, PROVIDER_LOST), m
    assert m.responses == m.responses_completed == 1
    assert (record.billable, record.reason) == (False, "provider_error")
    await assert_nothing_left(server)


async def test_call_whose_every_response_failed(make_server, rtc_settings, http, jfk48):
    """The caller speaks 6 s; each ``response.done`` comes back ``failed``
    (``server_error``) with no audio: the record has the audio in, the
    responses, none completed, and no audio out."""
    server = await make_server(**rtc_settings)
    ek = await mint(http, server)
    client = Client(server.url, jfk48[: 48000 * 2 * 6], then_silence=True)
    try:
        await client.connect(http, ek["value"], params={"voxgate_fault": "fail_responses"})
        await client.wait_event("session.created", 10)
        await asyncio.wait_for(client.track.finished.wait(), 20 * SLOW)
        await asyncio.sleep(0.3)  # the last RTP packets before the commit
        client.send({"type": "input_audio_buffer.commit"})
        client.send({"type": "response.create"})
        done = await client.wait_event("response.done", 30)
        r = await http.delete(server.url + client.location,
                              headers={"Authorization": f"Bearer {ek['value']}"})
        assert r.status == 200
        record = await server.session(client.session_id)
    finally:
        await client.close()
    assert done["response"]["status"] == "failed"
    assert done["response"]["status_details"]["error"]["type"] == "server_error"
    assert "output_audio_buffer.started" not in client.types()
    m = record.measurements
    assert m.closed_by == "client"
    assert m.audio_in_ms >= 5900, m.audio_in_ms  # the speech, then the silence that follows
    assert m.audio_out_ms == 0
    assert (m.responses, m.responses_completed) == (1, 0)
    # a failed response is a provider error (issue 20, item 2): not billable
    assert (m.responses_failed, m.provider_errors) == (1, 1)
    assert (record.billable, record.reason) == (False, "provider_error")
    await assert_nothing_left(server)


async def test_slow_provider_start_is_a_connect_timeout(make_server, rtc_settings, http, jfk48):
    """session.created 2.5 s late: media flows only then, so the connect
    latency (offer → media flowing) is over 2 s."""
    server = await make_server(**rtc_settings)
    ek = await mint(http, server)
    client = Client(server.url, jfk48[: 48000 * 2 * 4], then_silence=True)
    try:
        sdp = await client.offer()
        r = await http.post(server.url + "/v1/realtime/calls?voxgate_fault=delay_created:2500",
                            data=sdp, headers={"Authorization": f"Bearer {ek['value']}",
                                               "Content-Type": "application/sdp"})
        assert r.status == 201
        from aiortc import RTCSessionDescription

        await client.pc.setRemoteDescription(RTCSessionDescription(await r.text(), "answer"))
        await client.wait_event("session.created", 10)
        await asyncio.sleep(0.5)
        r2 = await http.delete(server.url + r.headers["Location"],
                               headers={"Authorization": f"Bearer {ek['value']}"})
        assert r2.status == 200
        record = await server.session(r.headers["X-Voxgate-Session-Id"])
    finally:
        await client.close()
    m = record.measurements
    assert record.reason == "connect_timeout", record.rule
    assert 2500 <= m.connect_ms < 4000 and m.ice_connected_ms < 1000
    assert m.upstream_ready_ms >= 2500
    await assert_nothing_left(server)


async def test_unreachable_candidates_are_an_ice_failure(make_server, http):
    server = await make_server(webrtc={"host_addresses": ["127.0.0.1"], "ice_timeout_s": 2.0})
    ek = await mint(http, server)
    client = Client(server.url, b"")
    try:
        sdp = await client.offer()
        dead = str(free_port())
        lines = []
        for line in sdp.split("\r\n"):
            if line.startswith("a=candidate:"):
                parts = line.split(" ")
                parts[5] = dead
                line = " ".join(parts)
            lines.append(line)
        r = await http.post(server.url + "/v1/realtime/calls", data="\r\n".join(lines),
                            headers={"Authorization": f"Bearer {ek['value']}",
                                     "Content-Type": "application/sdp"})
        assert r.status == 201
        record = await server.session(r.headers["X-Voxgate-Session-Id"])
    finally:
        await client.close()
    assert record.reason == "ice_failure", record.rule
    assert record.measurements.ice_failure and not record.measurements.turn_failure
    await assert_nothing_left(server)


async def test_lost_consent_ends_the_call(make_server, http, monkeypatch):
    """The client stops answering ICE consent checks (RFC 7675) mid-call:
    aioice closes voxgate's ICE connection and, after ``consent_grace_s``,
    the call ends. Consent timers shortened through aioice's module constants."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.1)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 3)
    server = await make_server(webrtc={"host_addresses": ["127.0.0.1"], "consent_grace_s": 2.0})
    ek = await mint(http, server)
    client = Client(server.url, b"")
    try:
        await client.connect(http, ek["value"])
        await client.wait_event("session.created", 10)
        await asyncio.sleep(0.3)
        conn = client.pc.getTransceivers()[0].receiver.transport.transport._connection
        conn.request_received = lambda *args: None  # the peer vanished
        record = await server.session(client.session_id)
    finally:
        await client.close()
    m = record.measurements
    assert m.closed_by == "client" and "consent" in m.close_reason, m.close_reason
    assert m.ice_state in ("failed", "closed") and not m.ice_failure  # aiortc: closed
    await assert_nothing_left(server)
