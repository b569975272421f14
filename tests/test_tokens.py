"""The SDK token endpoint and ephemeral keys, against a real server."""

from __future__ import annotations

import time

import pytest
from openai import AsyncOpenAI

from tests.test_ws_relay import recv_until, refusal, session_id_of


async def mint(http, server, key=None, body=None) -> tuple[int, dict]:
    async with http.post(server.url + "/v1/realtime/client_secrets",
                         headers={"Authorization": f"Bearer {key or server.key}"},
                         json=body) as resp:
        return resp.status, await resp.json()


async def test_mint_shape_and_lifetime(server, http):
    before = int(time.time())
    status, body = await mint(http, server, body={
        "expires_after": {"anchor": "created_at", "seconds": 120},
        "session": {"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."},
    })
    assert status == 200
    assert body["value"].startswith("ek_")
    assert before + 120 <= body["expires_at"] <= int(time.time()) + 120
    session = body["session"]
    assert session["type"] == "realtime" and session["object"] == "realtime.session"
    assert session["instructions"] == "Be brief."
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    # default lifetime 600 s, no body at all
    status, body = await mint(http, server)
    assert status == 200 and abs(body["expires_at"] - (time.time() + 600)) < 5
    # the key itself is not stored
    assert await server.store.find_ephemeral_key(body["value"]) is not None
    raw = (server.gateway.settings.sqlite_path).read_bytes()
    assert body["value"].encode() not in raw


@pytest.mark.parametrize("body,param", [
    ({"expires_after": {"anchor": "created_at", "seconds": 9}}, "expires_after.seconds"),
    ({"expires_after": {"anchor": "created_at", "seconds": 7201}}, "expires_after.seconds"),
    ({"expires_after": {"anchor": "now", "seconds": 60}}, "expires_after.anchor"),
    ({"expires_after": {"seconds": "60"}}, "expires_after.seconds"),
    ({"session": {"type": "video"}}, "session.type"),
    ({"session": "realtime"}, "session"),
    ({"session": {"audio": {"input": {"turn_detection": {"type": "loud_vad"}}}}},
     "session.audio.input.turn_detection.type"),
    ({"session": {"audio": {"input": {"turn_detection": {"threshold": 2.0}}}}},
     "session.audio.input.turn_detection.threshold"),
])
async def test_mint_rejects_bad_bodies(server, http, body, param):
    status, resp = await mint(http, server, body=body)
    assert status == 400
    assert resp["error"]["type"] == "invalid_request_error"
    assert resp["error"]["param"] == param


async def test_mint_rejects_malformed_json_and_ephemeral_auth(server, http):
    async with http.post(server.url + "/v1/realtime/client_secrets", data=b"{nope",
                         headers={"Authorization": f"Bearer {server.key}"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_json"
    _, body = await mint(http, server)
    status, resp = await mint(http, server, key=body["value"])
    assert status == 401  # an ephemeral key cannot mint another


async def test_beta_sessions_endpoint(server, http):
    async with http.post(server.url + "/v1/realtime/sessions", json={"model": "gpt-realtime"},
                         headers={"Authorization": f"Bearer {server.key}"}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["client_secret"]["value"].startswith("ek_")
    assert body["model"] == "gpt-realtime"


async def test_ephemeral_key_opens_sessions_with_its_config(server, http):
    _, body = await mint(http, server, body={"session": {
        "type": "realtime", "instructions": "Answer in one word.",
        "audio": {"input": {"turn_detection": None}}}})
    ek = body["value"]
    client = AsyncOpenAI(api_key=ek, base_url=server.url + "/v1", max_retries=0)
    for _ in range(2):  # a key may open several sessions until it expires
        async with client.realtime.connect(model="gpt-realtime") as conn:
            sid = session_id_of(conn)
            created = await conn.recv()  # the first event already carries the key's config
            assert created.type == "session.created"
            assert created.session.instructions == "Answer in one word."
            assert created.session.audio.input.turn_detection is None
        record = await server.session(sid)
        assert record.ephemeral_key_id is not None and record.project_id == server.project_id


async def test_browser_subprotocol_with_ephemeral_key(server, http):
    _, body = await mint(http, server)
    ws = await http.ws_connect(server.ws_url + "?model=gpt-realtime",
                               protocols=("realtime", f"openai-insecure-api-key.{body['value']}"))
    assert (await ws.receive_json())["type"] == "session.created"
    await ws.close()


async def test_expired_forged_and_other_project_ephemeral_keys(server, http):
    # expired
    _, expired = await server.store.create_ephemeral_key(server.project_id, {}, time.time() - 1)
    status, body = await refusal(server, expired)
    assert status == 401 and body["error"]["code"] == "expired_ephemeral_key"
    # forged: the right shape, never minted
    status, body = await refusal(server, "ek_" + "A" * 40)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    # another project's key, used for this project
    account, other_project, other_key = await server.new_account("roomy")
    _, theirs = await mint(http, server, key=other_key)
    status, body = await refusal(server, theirs["value"], **{"OpenAI-Project": server.project_id})
    assert status == 403 and body["error"]["code"] == "permission_denied"
    # ...and a project key for another project is refused the same way
    status, body = await refusal(server, other_key, **{"OpenAI-Project": server.project_id})
    assert status == 403
    # the other project's key works for its own project
    status, _ = await refusal(server, theirs["value"], **{"OpenAI-Project": other_project.id})
    assert status == 101
    await asyncio_sleep_until_idle(server)


async def asyncio_sleep_until_idle(server):
    import asyncio

    for _ in range(100):
        if not server.gateway.active:
            return
        await asyncio.sleep(0.02)


async def test_sessions_api_isolated_between_accounts(server, http):
    account, project, key = await server.new_account("roomy")
    client = AsyncOpenAI(api_key=key, base_url=server.url + "/v1", max_retries=0)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        sid = session_id_of(conn)
        await recv_until(conn, "session.created")
    await server.session(sid)
    mine = {"Authorization": f"Bearer {server.key}"}
    async with http.get(server.url + f"/v1/sessions/{sid}", headers=mine) as resp:
        assert resp.status == 404
    async with http.get(server.url + "/v1/sessions", headers=mine) as resp:
        assert sid not in [s["id"] for s in (await resp.json())["data"]]
    async with http.get(server.url + f"/v1/sessions?after={sid}", headers=mine) as resp:
        assert resp.status == 404
    async with http.get(server.url + f"/v1/sessions/{sid}",
                        headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200 and (await resp.json())["id"] == sid


async def test_openai_sdk_mints_and_uses_an_ephemeral_key(server):
    """A backend mints with the official SDK (only base_url changed), the
    browser-side client connects with the minted key."""
    backend = AsyncOpenAI(api_key=server.key, base_url=server.url + "/v1", max_retries=0)
    secret = await backend.realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 300},
        session={"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."},
    )
    assert secret.value.startswith("ek_")
    assert secret.expires_at > time.time() + 290
    assert secret.session.type == "realtime"
    browser = AsyncOpenAI(api_key=secret.value, base_url=server.url + "/v1", max_retries=0)
    async with browser.realtime.connect(model="gpt-realtime") as conn:
        sid = session_id_of(conn)
        created, _ = await recv_until(conn, "session.created")
        assert created.session.instructions == "Be brief."
    record = await server.session(sid)
    assert record.ephemeral_key_id is not None


async def test_minted_session_matches_the_live_session(server, http):
    """One set of defaults: the session object of a key minted with no
    config is what its sessions' session.created shows (but the session's
    own id, and expires_at: the key's expiry); a partial turn_detection is
    filled in as the live session fills it."""
    async with http.post(server.url + "/v1/realtime/client_secrets", json={},
                         headers={"Authorization": f"Bearer {server.key}"}) as resp:
        minted = await resp.json()
    assert minted["session"]["expires_at"] == minted["expires_at"] > time.time()
    async with http.ws_connect(server.ws_url, protocols=(
            "realtime", f"openai-insecure-api-key.{minted['value']}")) as ws:
        created = await ws.receive_json()
    assert created["type"] == "session.created"
    skip = ("id", "expires_at")
    assert {k: v for k, v in created["session"].items() if k not in skip} == \
        {k: v for k, v in minted["session"].items() if k not in skip}
    vad = {"type": "server_vad", "silence_duration_ms": 900}
    _, body = await mint(http, server, body={"session": {"audio": {"input": {"turn_detection": vad}}}})
    async with http.ws_connect(server.ws_url, protocols=(
            "realtime", f"openai-insecure-api-key.{body['value']}")) as ws:
        created = await ws.receive_json()
    minted_vad = body["session"]["audio"]["input"]["turn_detection"]
    assert minted_vad["silence_duration_ms"] == 900 and minted_vad["threshold"] == 0.5
    assert created["session"]["audio"]["input"]["turn_detection"] == minted_vad
