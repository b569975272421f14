"""WebRTC calls end to end with an aiortc client over loopback: real speech
in, the local provider's reply out as media, the session metered and
judged like a WebSocket session."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import SLOW
from tests.webrtc.client import Client

NO_VAD = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}


async def mint(http, server, key: str | None = None, session: dict | None = None) -> dict:
    resp = await http.post(server.url + "/v1/realtime/client_secrets",
                           json={"session": session or NO_VAD},
                           headers={"Authorization": f"Bearer {key or server.key}"})
    body = await resp.json()
    assert resp.status == 200, body
    return body


async def assert_nothing_left(server) -> None:
    gw = server.gateway
    for _ in range(100):
        if not gw.active:
            break
        await asyncio.sleep(0.02)
    assert not gw.active
    assert gw.admission.in_flight(server.account_id) == 0


async def speak_and_hear(client: Client) -> dict:
    """Wait for the speech to be sent, commit, ask for a reply, wait for the
    reply audio to finish playing."""
    await client.wait_event("session.created", 10)
    await asyncio.wait_for(client.track.finished.wait(), 20 * SLOW)
    await asyncio.sleep(0.3)  # the last RTP packets before the commit
    client.send({"type": "input_audio_buffer.commit"})
    client.send({"type": "response.create"})
    done = await client.wait_event("response.done", 60)
    await client.wait_event("output_audio_buffer.stopped", 30)
    return done


async def test_billable_call_with_real_speech(make_server, rtc_settings, http, jfk48):
    server = await make_server(**rtc_settings)
    ek = await mint(http, server)
    client = Client(server.url, jfk48)
    try:
        resp, answer = await client.connect(http, ek["value"])
        assert client.call_id.startswith("rtc_")
        assert "a=candidate:" in answer and " 127.0.0.1 " in answer
        done = await speak_and_hear(client)
        heard = " ".join(e.get("transcript", "") for e in client.events if e["type"]
                         == "conversation.item.input_audio_transcription.completed")
        assert any(w in heard.lower() for w in ("country", "americans", "fellow")), heard
        assert "response.output_audio.delta" not in client.types()
        assert "output_audio_buffer.started" in client.types()
        assert client.audio_samples_nonzero > 25  # > 0.5 s of reply heard
        assert done["response"]["status"] == "completed"
        r = await http.post(server.url + client.location + "/hangup",
                            headers={"Authorization": f"Bearer {ek['value']}"})
        assert r.status == 200
    finally:
        await client.close()
    record = await server.session(client.session_id)
    m = record.measurements
    assert record.transport == "webrtc"
    assert record.billable is True and record.reason == "billable", record.rule
    assert 10_700 <= m.audio_in_ms <= 11_100, m.audio_in_ms
    assert m.audio_out_ms > 500
    assert m.ice_pair_type == "host"
    assert m.connect_ms is not None and 0 < m.connect_ms < 2000
    assert m.ice_checking_ms is not None and m.ice_connected_ms is not None
    assert m.dtls_connected_ms is not None and m.upstream_ready_ms is not None
    assert m.closed_by == "client" and m.close_reason == "hangup"
    assert m.total_tokens == done["response"]["usage"]["total_tokens"]
    # the call's record, as the voice page reads it
    r = await http.get(server.url + client.location,
                       headers={"Authorization": f"Bearer {ek['value']}"})
    body = await r.json()
    assert r.status == 200 and body["id"] == client.session_id and body["billable"] is True
    await assert_nothing_left(server)
    print(f"connect_ms={m.connect_ms:.1f} ice_connected_ms={m.ice_connected_ms:.1f} "
          f"dtls_connected_ms={m.dtls_connected_ms:.1f}")
