"""Sideband control of a WebRTC call (``GET /v1/realtime?call_id=…``) with
an aiortc client as the browser: who may attach, what the attached socket
gets, and how it ends."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import SLOW
from tests.webrtc.client import Client
from tests.webrtc.test_calls import assert_nothing_left, mint


async def refused(http, url: str, key: str) -> tuple[int, dict]:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(url, headers={"Authorization": f"Bearer {key}"})
    resp = await http.get(url, headers={"Authorization": f"Bearer {key}",
                                        "Connection": "Upgrade", "Upgrade": "websocket",
                                        "Sec-WebSocket-Version": "13",
                                        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    return err.value.status, await resp.json()


async def test_who_may_attach(make_server, rtc_settings, http):
    server = await make_server(**rtc_settings)
    ek = await mint(http, server)
    client = Client(server.url, b"")
    try:
        await client.connect(http, ek["value"])
        await client.wait_event("session.created", 10)
        url = server.ws_url + f"?call_id={client.call_id}"
        _, _, other_key = await server.new_account()
        status, body = await refused(http, url, other_key)
        assert status == 403 and body["error"]["code"] == "permission_denied"
        status, body = await refused(http, url, ek["value"])  # browsers' keys cannot
        assert status == 401
        status, body = await refused(http, server.ws_url + "?call_id=rtc_0000", server.key)
        assert status == 404 and body["error"]["param"] == "call_id"
        # the call's own project key attaches; no second session is admitted
        async with http.ws_connect(url, headers={"Authorization": f"Bearer {server.key}"}) as ws:
            assert ws.protocol is None or ws.protocol == "realtime"
            assert len(server.gateway.active) == 1
            await ws.send_str("{not json")
            err = await ws.receive_json(timeout=5 * SLOW)
            assert err["type"] == "error" and err["error"]["code"] == "invalid_json"
            assert "error" not in client.types()  # the error went to the sender only
            await ws.send_json({"type": "session.update",
                                "session": {"type": "realtime", "instructions": "Be terse."}})
            while True:  # the attached socket gets the answer…
                event = await ws.receive_json(timeout=5 * SLOW)
                if event["type"] == "session.updated" and \
                        event["session"]["instructions"] == "Be terse.":
                    break
            # …and so does the browser
            assert any(e["type"] == "session.updated"
                       and e["session"]["instructions"] == "Be terse." for e in client.events)
            r = await http.post(server.url + client.location + "/hangup",
                                headers={"Authorization": f"Bearer {ek['value']}"})
            assert r.status == 200
            msg = await ws.receive(timeout=5 * SLOW)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert msg.data == 1000 and msg.extra.startswith("call ended")
        # an ended call cannot be attached to
        status, _ = await refused(http, url, server.key)
        assert status == 404
    finally:
        await client.close()
    record = await server.session(client.session_id)
    m = record.measurements
    assert m.event_counts["session.update"] == 1 and m.client_errors == 1
    await assert_nothing_left(server)
    await asyncio.sleep(0)
