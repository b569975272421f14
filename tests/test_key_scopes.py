"""Keys that only do what they are for: ephemeral keys open realtime
sessions only, die with their parent, keep their model; project keys see
their own project from the networks it allows; account-wide reads and
billing actions take an admin key. Each test is named after the attack."""

from __future__ import annotations

import aiohttp
import pytest

from tests.test_ws_relay import recv_until, refusal, sdk, session_id_of

ACCOUNT_ROUTES = [
    ("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/sess_000000000000000000000000"),
    ("GET", "/billing/usage"),
    ("GET", "/billing/invoices"),
    ("POST", "/billing/checkout"),
    ("POST", "/billing/portal"),
    ("PUT", "/billing/alerts-webhook"),
    ("GET", "/billing/alerts-webhook"),
    ("PUT", "/v1/webhook"),
    ("GET", "/v1/webhook"),
    ("DELETE", "/v1/webhook"),
    ("POST", "/v1/webhook/test"),
    ("GET", "/v1/webhook/deliveries"),
    ("POST", "/v1/webhook/deliveries/1/resend"),
    ("PATCH", "/v1/projects/{project}"),
    ("GET", "/v1/projects/{project}"),
    ("POST", "/v1/realtime/client_secrets"),
    ("POST", "/v1/realtime/sessions"),
]


async def mint(http, server, key: str | None = None, session: dict | None = None) -> str:
    async with http.post(server.url + "/v1/realtime/client_secrets",
                         json={"session": session or {"type": "realtime"}},
                         headers={"Authorization": f"Bearer {key or server.key}"}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body["value"]


@pytest.mark.parametrize("method, path", ACCOUNT_ROUTES)
async def test_ephemeral_key_on_account_route(make_server, http, method, path):
    server = await make_server()
    ek = await mint(http, server)
    async with http.request(method, server.url + path.format(project=server.project_id),
                            json={"url": "https://example.com/hook", "plan": "starter",
                                  "allowed_origins": []},
                            headers={"Authorization": f"Bearer {ek}"}) as resp:
        body = await resp.json()
    assert resp.status == 401, (resp.status, body)
    assert body["error"]["code"] == "invalid_api_key"
    assert "ephemeral keys (ek_…) open realtime sessions only" in body["error"]["message"]


@pytest.mark.parametrize("method, path", [r for r in ACCOUNT_ROUTES
                                          if r[1].startswith(("/billing", "/v1/webhook"))
                                          or r[0] == "PATCH"])
async def test_project_key_on_account_wide_route(make_server, http, method, path):
    server = await make_server()
    async with http.request(method, server.url + path.format(project=server.project_id),
                            json={"url": "https://example.com/hook", "plan": "starter",
                                  "allowed_origins": []},
                            headers={"Authorization": f"Bearer {server.key}"}) as resp:
        body = await resp.json()
    assert resp.status == 403, (resp.status, body)
    assert "admin key (vg_admin_" in body["error"]["message"]
    async with http.get(server.url + "/billing/usage",
                        headers={"Authorization": f"Bearer {server.admin_key}"}) as resp:
        assert resp.status == 200


async def test_revoked_admin_key(make_server, http):
    server = await make_server()
    (admin,) = await server.store.list_admin_keys(server.account_id)
    await server.store.revoke_admin_key(admin.id)
    async with http.get(server.url + "/billing/usage",
                        headers={"Authorization": f"Bearer {server.admin_key}"}) as resp:
        assert resp.status == 401 and "revoked" in (await resp.json())["error"]["message"]
    # an admin key opens no sessions
    status, body = await refusal(server, server.admin_key)
    assert status == 401 and "not an admin key" in body["error"]["message"]


async def test_ephemeral_key_outliving_its_revoked_api_key(make_server, http):
    server = await make_server()
    ek = await mint(http, server)
    (key,) = await server.store.list_api_keys(server.project_id)
    await server.store.revoke_api_key(key.id)
    status, body = await refusal(server, "", **{"Sec-WebSocket-Protocol":
                                                f"realtime, openai-insecure-api-key.{ek}"})
    assert status == 401 and "revoked" in body["error"]["message"], body


async def test_ephemeral_key_outliving_its_deleted_project(make_server, http):
    server = await make_server()
    ek = await mint(http, server)
    await server.store.delete_project(server.project_id)
    status, body = await refusal(server, ek)
    assert status == 401 and "revoked" in body["error"]["message"], body


async def test_ephemeral_key_outliving_its_closed_account(make_server, http):
    server = await make_server()
    ek = await mint(http, server)
    await server.store.update_account(server.account_id, status="canceled")
    status, body = await refusal(server, ek)
    assert status == 403 and "closed" in body["error"]["message"], body


async def test_model_override_of_an_ephemeral_key(make_server, http):
    server = await make_server()
    ek = await mint(http, server, session={"type": "realtime", "model": "gpt-realtime"})
    async with http.get(server.ws_url + "?model=gpt-4o-realtime-preview", headers={
            "Authorization": f"Bearer {ek}", "Connection": "Upgrade", "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as r:
        body = await r.json()
    assert r.status == 400 and body["error"]["code"] == "model_mismatch", body
    assert body["error"]["param"] == "model"
    # the same model, or none, is fine
    async with http.ws_connect(server.ws_url + "?model=gpt-realtime",
                               headers={"Authorization": f"Bearer {ek}"}) as ws:
        assert (await ws.receive_json())["type"] == "session.created"
    # WebRTC calls too
    async with http.post(server.url + "/v1/realtime/calls?model=other", data="v=0\r\n",
                         headers={"Authorization": f"Bearer {ek}",
                                  "Content-Type": "application/sdp"}) as r:
        body = await r.json()
    assert r.status == 400 and body["error"]["code"] == "model_mismatch"


async def test_model_outside_the_projects_pins(make_server, http):
    server = await make_server()
    async with http.patch(server.url + f"/v1/projects/{server.project_id}",
                          json={"allowed_models": ["gpt-realtime-mini"]},
                          headers={"Authorization": f"Bearer {server.admin_key}"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["allowed_models"] == ["gpt-realtime-mini"]
    async with http.post(server.url + "/v1/realtime/client_secrets",
                         json={"session": {"type": "realtime", "model": "gpt-realtime"}},
                         headers={"Authorization": f"Bearer {server.key}"}) as resp:
        body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "model_not_allowed", body
    # no model asked for: the project's pinned one, not the operator's default
    ek = await mint(http, server)
    async with http.ws_connect(server.ws_url, headers={"Authorization": f"Bearer {ek}"}) as ws:
        created = await ws.receive_json()
    assert created["type"] == "session.created"
    status, body = await refusal(server, server.key)  # ?model=gpt-realtime, not pinned
    assert status == 400 and body["error"]["code"] == "model_not_allowed"


async def test_operator_pins_models(make_server, http):
    server = await make_server(upstream={"allowed_models": ["gpt-realtime"]})
    status, body = await refusal(server, server.key)
    assert status == 101 or status != 400, body  # gpt-realtime is allowed
    async with http.get(server.ws_url + "?model=gpt-4o-realtime-preview", headers={
            "Authorization": f"Bearer {server.key}", "Connection": "Upgrade",
            "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as r:
        body = await r.json()
    assert r.status == 400 and body["error"]["code"] == "model_not_allowed"
    assert "voxgate" in body["error"]["message"]


async def test_project_key_reading_another_projects_sessions(make_server, http):
    server = await make_server(plan="roomy")
    other = await server.store.create_project(server.account_id, "other")
    _, other_key = await server.store.create_api_key(other.id, "k")
    sids = []
    for key in (server.key, other_key):
        async with sdk(server, key).realtime.connect(model="gpt-realtime") as conn:
            sids.append(session_id_of(conn))
            await recv_until(conn, "session.created")
        await server.session(sids[-1])
    mine, theirs = sids

    async def get(path: str, key: str) -> tuple[int, dict]:
        async with http.get(server.url + path,
                            headers={"Authorization": f"Bearer {key}"}) as resp:
            return resp.status, await resp.json()

    status, body = await get("/v1/sessions", server.key)
    assert status == 200 and [s["id"] for s in body["data"]] == [mine]
    assert (await get(f"/v1/sessions/{theirs}", server.key))[0] == 404
    assert (await get(f"/v1/sessions/{mine}", server.key))[0] == 200
    assert (await get(f"/v1/sessions?project_id={other.id}", server.key))[0] == 403
    assert (await get(f"/v1/sessions?after={theirs}", server.key))[0] == 404
    status, body = await get("/v1/sessions", server.admin_key)  # the whole account
    assert status == 200 and {s["id"] for s in body["data"]} == {mine, theirs}


async def test_api_key_from_outside_the_projects_networks(make_server, http):
    server = await make_server()
    admin = {"Authorization": f"Bearer {server.admin_key}"}
    async with http.patch(server.url + f"/v1/projects/{server.project_id}",
                          json={"allowed_ips": ["203.0.113.0/24", "10.1.2.3/8"]},
                          headers=admin) as resp:
        body = await resp.json()
    assert resp.status == 200 and body["allowed_ips"] == ["203.0.113.0/24", "10.0.0.0/8"]
    async with http.post(server.url + "/v1/realtime/client_secrets", json={},
                         headers={"Authorization": f"Bearer {server.key}"}) as resp:
        body = await resp.json()
    assert resp.status == 403 and body["error"]["code"] == "ip_not_allowed", body
    status, body = await refusal(server, server.key)
    assert status == 403 and body["error"]["code"] == "ip_not_allowed"
    async with http.patch(server.url + f"/v1/projects/{server.project_id}",
                          json={"allowed_ips": ["127.0.0.0/8"]}, headers=admin) as resp:
        assert resp.status == 200
    await mint(http, server)
    async with http.patch(server.url + f"/v1/projects/{server.project_id}",
                          json={"allowed_ips": ["not-a-network"]}, headers=admin) as resp:
        body = await resp.json()
    assert resp.status == 400 and body["error"]["param"] == "allowed_ips"


async def test_admin_key_from_the_cli_and_cli_actions_audited(tmp_path):
    import json
    import os

    from tests.test_cli import ROOT, voxgate

    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    account = json.loads(voxgate("admin", "create-account", "o@example.com", cwd=tmp_path,
                                 env=env).stdout)
    out = voxgate("admin", "create-admin-key", account["id"], cwd=tmp_path, env=env).stdout
    made = json.loads(out.splitlines()[0])
    assert made["key"].startswith("vg_admin_") and made["key"].startswith(made["prefix"])
    project = json.loads(voxgate("admin", "create-project", account["id"], "p", cwd=tmp_path,
                                 env=env).stdout)
    pins = voxgate("admin", "set-models", project["id"], "gpt-realtime", cwd=tmp_path, env=env)
    assert json.loads(pins.stdout)["allowed_models"] == ["gpt-realtime"]
    ips = voxgate("admin", "set-ips", project["id"], "192.0.2.1", cwd=tmp_path, env=env)
    assert json.loads(ips.stdout)["allowed_ips"] == ["192.0.2.1/32"]
    voxgate("admin", "set-plan", account["id"], "starter", cwd=tmp_path, env=env)
    assert voxgate("billing", "settle", cwd=tmp_path, env=env).returncode == 0

    import sqlite3

    db = sqlite3.connect(tmp_path / "data" / "voxgate.db")
    rows = db.execute("SELECT actor, action, account_id FROM audit_log ORDER BY id").fetchall()
    actions = [r[1] for r in rows]
    assert actions == ["account.created", "admin_key.created", "project.created",
                       "project.pins_set", "project.pins_set", "account.plan_set",
                       "billing.settled"]
    assert all(r[0].startswith("cli:") for r in rows)
    assert all(r[2] == account["id"] for r in rows[:-1])
    assert made["key"] not in str(db.execute("SELECT * FROM audit_log").fetchall())


async def test_refused_upgrade_is_not_an_upgrade(make_server, http):
    """A refusal before the upgrade stays an HTTP error the SDKs can read."""
    server = await make_server()
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(server.ws_url, headers={"Authorization": "Bearer ek_nope"})
    assert err.value.status == 401


async def test_model_override_through_session_update(make_server, http):
    """``session.update`` with another model does not reach the provider
    (a recording provider on loopback): the session keeps the model it was
    admitted with; the rest of the update goes through."""
    from aiohttp import web

    received: list[dict] = []

    async def provider(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("realtime",))
        await ws.prepare(request)
        await ws.send_json({"type": "session.created", "event_id": "event_1",
                            "session": {"type": "realtime", "model": request.query["model"]}})
        async for msg in ws:
            received.append(msg.json())
            await ws.send_json({"type": "session.updated", "event_id": "event_2",
                                "session": {"type": "realtime"}})
        return ws

    app = web.Application()
    app.router.add_get("/v1/realtime", provider)
    runner = web.AppRunner(app)
    await runner.setup()
    from tests.conftest import free_port

    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        server = await make_server(upstream_url=f"ws://127.0.0.1:{port}/v1/realtime",
                                   upstream={"allowed_models": ["gpt-realtime"]})
        async with sdk(server).realtime.connect(model="gpt-realtime") as conn:
            await recv_until(conn, "session.created")
            await conn.session.update(session={"type": "realtime", "instructions": "Be brief.",
                                               "model": "gpt-4o-realtime-preview"})
            await recv_until(conn, "session.updated")
    finally:
        await runner.cleanup()
    (update,) = received
    assert update["type"] == "session.update"
    assert update["session"] == {"type": "realtime", "instructions": "Be brief."}


async def test_admin_and_project_routes_carry_rate_limit_headers(make_server, http):
    server = await make_server()
    for key, path in ((server.admin_key, "/billing/usage"),
                      (server.key, f"/v1/projects/{server.project_id}")):
        async with http.get(server.url + path,
                            headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 200
            assert int(resp.headers["x-ratelimit-limit-requests"]) == 1000
            assert int(resp.headers["x-ratelimit-remaining-requests"]) < 1000


@pytest.mark.parametrize("host, demo, expected", [("0.0.0.0", None, False),
                                                  ("127.0.0.1", None, True),
                                                  ("0.0.0.0", True, True)])
async def test_demo_account_off_a_loopback_bind(make_server, capsys, host, demo, expected):
    """The demo account (and its key, printed at first start) exists only
    when voxgate listens on loopback, unless the operator forces it."""
    server = await make_server(host=host, **({} if demo is None else {"demo": demo}))
    emails = [a.email for a in await server.store.list_accounts()]
    assert ("demo@voxgate.local" in emails) is expected, emails
    assert ("demo API key: vg_live_" in capsys.readouterr().out) is expected
