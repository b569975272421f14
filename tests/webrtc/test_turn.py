"""TURN with a real coturn on loopback: minted TURN REST credentials, a
relay-only client, and TURN failures recorded as ``turn_failure``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time

import pytest

from tests.conftest import SLOW
from tests.webrtc.client import Client
from tests.webrtc.test_calls import assert_nothing_left, mint


def turn_settings(url: str, secret: str, **extra) -> dict:
    return {"webrtc": {"host_addresses": ["127.0.0.1"], "turn_urls": [url],
                       "turn_secret": secret, "turn_ttl_s": 600, "ice_timeout_s": 3.0 * SLOW,
                       **extra}}


async def test_minted_credentials_follow_turn_rest(make_server, http, turn_server):
    url, secret = turn_server
    server = await make_server(**turn_settings(url, secret))
    ek = await mint(http, server)
    (turn,) = ek["ice_servers"]
    assert turn["urls"] == [url]
    expiry, project = turn["username"].split(":")
    assert project == server.project_id
    assert 590 <= int(expiry) - time.time() <= 601
    expected = base64.b64encode(
        hmac.new(secret.encode(), turn["username"].encode(), hashlib.sha1).digest()).decode()
    assert turn["credential"] == expected
    r = await http.get(server.url + "/v1/realtime/ice_servers",
                       headers={"Authorization": f"Bearer {ek['value']}"})
    body = await r.json()
    assert r.status == 200 and body["ice_servers"][0]["username"].endswith(server.project_id)
    r = await http.get(server.url + "/v1/realtime/ice_servers",
                       headers={"Authorization": f"Bearer {server.key}"})
    assert r.status == 401


async def test_relay_only_client_connects_through_coturn(make_server, http, turn_server, jfk48):
    url, secret = turn_server
    server = await make_server(**turn_settings(url, secret))
    ek = await mint(http, server)
    client = Client(server.url, jfk48[: 48000 * 2], ice_servers=ek["ice_servers"], relay=True)
    try:
        _, _ = await client.connect(http, ek["value"])
        assert "typ relay" in client.pc.localDescription.sdp
        assert "typ host" not in client.pc.localDescription.sdp
        await client.wait_event("session.created", 10)
        await asyncio.wait_for(client.track.finished.wait(), 10 * SLOW)
        await asyncio.sleep(0.3)
        r = await http.post(server.url + client.location + "/hangup",
                            headers={"Authorization": f"Bearer {ek['value']}"})
        assert r.status == 200
    finally:
        await client.close()
    record = await server.session(client.session_id)
    m = record.measurements
    assert m.ice_pair_type == "relay"
    assert m.connect_ms is not None and m.connect_ms < 2000
    assert 800 <= m.audio_in_ms <= 1100
    assert record.reason == "too_short"
    await assert_nothing_left(server)
    print(f"relay connect_ms={m.connect_ms:.1f}")


@pytest.mark.parametrize("side", ["client", "voxgate"])
async def test_turn_failure_is_recorded(make_server, http, turn_server, side):
    """A relay-only client whose TURN credentials are refused (wrong
    secret), or voxgate configured relay-only with a refused allocation:
    the call never connects and is recorded as ``turn_failure``."""
    url, secret = turn_server
    if side == "client":
        server = await make_server(**turn_settings(url, "not-the-secret"))
    else:
        server = await make_server(**turn_settings(url, "not-the-secret",
                                                   ice_transport_policy="relay"))
    ek = await mint(http, server)
    client = Client(server.url, b"", ice_servers=ek["ice_servers"], relay=(side == "client"))
    started = time.monotonic()
    try:
        await client.connect(http, ek["value"])
        record = await _completed(server, client.session_id, 10 * SLOW)
    finally:
        await client.close()
    assert record.billable is False and record.reason == "turn_failure", record.rule
    m = record.measurements
    assert m.turn_failure and not m.ice_failure and m.ice_pair_type is None
    assert time.monotonic() - started < 10 * SLOW
    print(f"{side}: {record.rule}")
    await assert_nothing_left(server)


async def _completed(server, session_id: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while True:
        record = await server.store.get_session(session_id)
        if record is not None and record.status == "completed":
            return record
        assert time.monotonic() < deadline, f"session {session_id} still {record.status}"
        await asyncio.sleep(0.05)
