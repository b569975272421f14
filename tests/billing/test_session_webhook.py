"""The customer webhook endpoint and its ``session.completed`` event (issue
21, item 6), end to end: real voxgate on loopback, real sessions over
WebSocket through the local voice provider, a real receiver on a loopback
port verifying ``Voxgate-Signature``; the receiver down then up again; two
``voxgate serve`` processes on one PostgreSQL database (Redis admission)
sending one event per session; ``PUT|GET|DELETE /v1/webhook`` and bad
input; the signature-checking code of docs/webhooks.md run as written
(Python here, Node.js as the receiver of a real delivery)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import subprocess
import time
import uuid

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.billing.conftest import eventually
from tests.conftest import PG_URL, ROOT, SLOW, TEST_CATALOG, free_port, wait_port
from voxgate.billing.notify import (
    SIGNATURE_HEADER,
    Notifier,
    sign_payload,
    verify_signature,
)
from voxgate.billing.service import BILLING
from voxgate.proxy.gateway import ActiveSession
from voxgate.proxy.ws_relay import SESSION_ID_HEADER

DOCS = ROOT / "docs" / "webhooks.md"
CHUNK = 24000 * 2 // 50  # 20 ms of 24 kHz PCM16
FAST_OUTBOX = {"dev_mode": True,  # loopback receivers
               "smtp": {"send_interval_s": 0.1},
               "billing": {"retry_base_s": 0.1, "retry_max_s": 0.5}}


def doc_snippet(marker: str) -> str:
    """The fenced code block after ``<!-- webhooks:<marker> -->`` in docs/webhooks.md."""
    text = DOCS.read_text()
    m = re.search(rf"<!-- webhooks:{marker} -->\n```\w+\n(.*?)```", text, re.S)
    assert m, f"no {marker} snippet in {DOCS}"
    return m.group(1)


def docs_verifier():
    """``verify_voxgate_signature`` as docs/webhooks.md writes it."""
    namespace: dict = {}
    exec(compile(doc_snippet("python"), str(DOCS), "exec"), namespace)  # noqa: S102 - our doc
    return namespace["verify_voxgate_signature"]


class Receiver:
    """A customer's endpoint on a fixed loopback port, started and stopped
    at will (stopped: the port refuses connections). Records (headers, body)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.got: list[tuple[dict[str, str], bytes]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.got.append((dict(request.headers), await request.read()))
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def events(self, event_type: str | None = None) -> list[dict]:
        found = [orjson.loads(body) for _, body in self.got]
        return [e for e in found if event_type is None or e["type"] == event_type]

    async def has(self, n: int, event_type: str | None = None) -> list[dict] | None:
        found = self.events(event_type)
        return found if len(found) >= n else None


@pytest.fixture
async def receiver():
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def documented(method: str, path: str, status: int, body) -> None:
    """``body`` has the shape the OpenAPI document gives ``method path`` answering ``status``."""
    from jsonschema import Draft202012Validator, validate

    from voxgate.proxy.openapi import document

    doc = document()
    op = doc["paths"][path][method.lower()]
    schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
    validate(body, {**schema, "components": doc["components"]}, cls=Draft202012Validator)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def put_webhook(http, server, url: str, events: list[str]) -> dict:
    async with http.put(server.url + "/v1/webhook", json={"url": url, "events": events},
                        headers=auth(server.admin_key)) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body


async def run_session(ws_url: str, key: str, pcm: bytes = b"") -> str:
    """One real session over WebSocket: session.created, ``pcm`` appended,
    closed by the client. Returns its id."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(ws_url + "?model=gpt-realtime", headers=auth(key)) as ws:
            session_id = ws._response.headers[SESSION_ID_HEADER]
            async with asyncio.timeout(20 * SLOW):
                while orjson.loads((await ws.receive()).data)["type"] != "session.created":
                    pass
            for i in range(0, len(pcm), CHUNK):
                await ws.send_str(orjson.dumps({
                    "type": "input_audio_buffer.append",
                    "audio": base64.b64encode(pcm[i:i + CHUNK]).decode()}).decode())
    return session_id


async def session_json(http, base_url: str, admin_key: str, session_id: str) -> dict:
    async with http.get(f"{base_url}/v1/sessions/{session_id}", headers=auth(admin_key)) as resp:
        assert resp.status == 200
        return await resp.json()


async def session_rows(db, account_id: str) -> list:
    return [d for d in await db.list_webhooks(account_id, 100) if d.event_type == "session.completed"]


# ---------------------------------------------------------------- one process


async def test_session_completed_delivered_signed_with_the_session_object(
        make_server, receiver, http, jfk_pcm):
    server = await make_server(**FAST_OUTBOX)
    put = await put_webhook(http, server, receiver.url, ["session.completed"])
    assert put["url"] == receiver.url and put["events"] == ["session.completed"]
    secret = put["secret"]
    assert secret.startswith("whsec_")

    session_id = await run_session(server.ws_url, server.key, jfk_pcm[:CHUNK * 100])
    record = await server.session(session_id)
    (event,) = await eventually(lambda: receiver.has(1), timeout_s=10)
    headers, body = receiver.got[0]
    assert headers["Content-Type"] == "application/json"
    assert verify_signature(secret, body, headers[SIGNATURE_HEADER])
    assert docs_verifier()(secret, body, headers[SIGNATURE_HEADER])  # docs/webhooks.md's code
    assert not verify_signature("whsec_other", body, headers[SIGNATURE_HEADER])

    assert set(event) == {"id", "type", "created", "data"}
    assert event["id"] == "evt_" + session_id and event["type"] == "session.completed"
    assert abs(event["created"] - record.ended_at) < 10
    assert event["data"] == await session_json(http, server.url, server.admin_key, session_id)
    assert event["data"]["audio_in_ms"] == 2000  # 100 appends of 20 ms

    # the completion again (another process, a retry): nothing more queued or sent
    svc = server.app[BILLING]
    assert not await svc.notifier.session_completed(server.account_id, event["data"])
    active = ActiveSession(record=record, principal=None, plan=None, lease=None, meter=None)
    await svc.on_session_recorded(active, None, None)  # the gateway hook, run again
    (row,) = await session_rows(svc.db, server.account_id)
    assert row.delivered_at is not None and row.attempts == 0
    assert len(receiver.got) == 1


async def test_receiver_down_then_up_gets_the_event_once(make_server, http):
    server = await make_server(**FAST_OUTBOX)
    down = Receiver()  # its port refuses connections until started
    secret = (await put_webhook(http, server, down.url, ["session.completed"]))["secret"]
    session_id = await run_session(server.ws_url, server.key)
    await server.session(session_id)
    db = server.app[BILLING].db

    async def retried():
        rows = await session_rows(db, server.account_id)
        return rows if rows and rows[0].attempts >= 3 else None

    (row,) = await eventually(retried, timeout_s=10)
    assert row.delivered_at is None and "Connect" in (row.last_error or ""), row

    await down.start()
    try:
        (event,) = await eventually(lambda: down.has(1), timeout_s=10)
        async def delivered():
            rows = await session_rows(db, server.account_id)
            return rows if rows[0].delivered_at is not None else None

        await eventually(delivered)
    finally:
        await down.stop()
    assert len(down.got) == 1
    headers, body = down.got[0]
    assert verify_signature(secret, body, headers[SIGNATURE_HEADER])
    assert event["id"] == "evt_" + session_id
    assert event["data"] == await session_json(http, server.url, server.admin_key, session_id)


async def test_only_subscribed_events_are_queued_test_event_and_resend(make_server, receiver,
                                                                      http):
    """An endpoint subscribed to the alerts only gets no session.completed;
    ``POST /v1/webhook/test`` reaches it anyway; a delivery listed by
    ``GET /v1/webhook/deliveries`` and resent arrives again with its id."""
    server = await make_server(**FAST_OUTBOX)
    secret = (await put_webhook(http, server, receiver.url, ["quota_warning"]))["secret"]
    await server.session(await run_session(server.ws_url, server.key))
    db = server.app[BILLING].db
    assert await db.list_webhooks(server.account_id) == []

    async with http.post(server.url + "/v1/webhook/test", headers=auth(server.admin_key)) as resp:
        assert resp.status == 200
        queued = await resp.json()
    assert queued["queued"] is True and queued["id"].startswith("evt_")
    documented("POST", "/v1/webhook/test", 200, queued)
    (test_event,) = await eventually(lambda: receiver.has(1), timeout_s=10)
    assert test_event["id"] == queued["id"] and test_event["type"] == "webhook.test"
    assert test_event["data"]["url"] == receiver.url
    headers, body = receiver.got[0]
    assert verify_signature(secret, body, headers[SIGNATURE_HEADER])

    async def delivered():
        async with http.get(server.url + "/v1/webhook/deliveries",
                            headers=auth(server.admin_key)) as resp:
            listed = await resp.json()
        documented("GET", "/v1/webhook/deliveries", 200, listed)
        data = listed["data"]
        return data if data and data[0]["status"] == "delivered" else None

    (delivery,) = await eventually(delivered)
    assert (delivery["event_id"], delivery["type"], delivery["attempts"]) == (
        queued["id"], "webhook.test", 0)
    assert delivery["payload"] == test_event
    async with http.post(f"{server.url}/v1/webhook/deliveries/{delivery['id']}/resend",
                         headers=auth(server.admin_key)) as resp:
        assert resp.status == 200
    again = await eventually(lambda: receiver.has(2), timeout_s=10)
    assert [e["id"] for e in again] == [queued["id"]] * 2
    async with http.post(f"{server.url}/v1/webhook/deliveries/999999/resend",
                         headers=auth(server.admin_key)) as resp:
        assert resp.status == 404


async def test_put_get_delete_and_the_alerts_alias(make_server, http):
    server = await make_server(**FAST_OUTBOX)
    base, admin = server.url, auth(server.admin_key)
    url = "http://127.0.0.1:9/hook"

    async def get(path: str = "/v1/webhook") -> dict:
        async with http.get(base + path, headers=admin) as resp:
            assert resp.status == 200
            return await resp.json()

    assert await get() == {"object": "webhook_endpoint", "url": None, "events": []}
    put = await put_webhook(http, server, url, ["session.completed", "session.completed",
                                                "quota_exhausted"])
    assert put["events"] == ["session.completed", "quota_exhausted"]
    documented("PUT", "/v1/webhook", 200, put)
    got = await get()
    documented("GET", "/v1/webhook", 200, got)
    assert got == {"object": "webhook_endpoint", "url": url,
                   "events": ["session.completed", "quota_exhausted"]}
    assert put["secret"] not in orjson.dumps(got).decode()
    second = await put_webhook(http, server, url, ["session.completed"])
    assert second["secret"] != put["secret"]  # each PUT makes a new one

    # the alias: adds the alert events (quota and spend limit), GETs the url,
    # DELETE takes only them away
    async with http.put(base + "/billing/alerts-webhook", json={"url": url}, headers=admin) as r:
        assert r.status == 200 and (await r.json())["secret"].startswith("whsec_")
    assert (await get())["events"] == ["session.completed", "quota_warning", "quota_exhausted",
                                       "spend_warning", "spend_limit_reached"]
    assert await get("/billing/alerts-webhook") == {"url": url}
    async with http.delete(base + "/billing/alerts-webhook", headers=admin) as r:
        assert await r.json() == {"deleted": True}
    assert await get() == {"object": "webhook_endpoint", "url": url,
                           "events": ["session.completed"]}
    assert await get("/billing/alerts-webhook") == {"url": None}

    async with http.delete(base + "/v1/webhook", headers=admin) as r:
        assert r.status == 200 and await r.json() == {"deleted": True}
    assert await get() == {"object": "webhook_endpoint", "url": None, "events": []}
    async with http.post(base + "/v1/webhook/test", headers=admin) as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        documented("POST", "/v1/webhook/test", 404, await r.json())

    # who may call it: the account owner only
    async with http.get(base + "/v1/webhook", headers=auth(server.key)) as r:
        assert r.status == 403
    async with http.put(base + "/v1/webhook", json={"url": url, "events": ["session.completed"]},
                        headers=auth(server.key)) as r:
        assert r.status == 403 and "secret" not in await r.text()
    async with http.get(base + "/v1/webhook") as r:
        assert r.status == 401


@pytest.mark.parametrize(("body", "code", "param"), [
    ({"url": "ftp://example.com/h", "events": ["session.completed"]}, "unsafe_url", "url"),
    ({"url": "not a url", "events": ["session.completed"]}, "unsafe_url", "url"),
    ({"events": ["session.completed"]}, "unsafe_url", "url"),
    ({"url": "https://127.0.0.1/h", "events": ["session.completed"]}, "unsafe_url", "url"),
    ({"url": "https://10.0.0.8/h", "events": ["session.completed"]}, "unsafe_url", "url"),
    ({"url": "https://example.com/h", "events": ["session.ended"]}, "unknown_event", "events"),
    ({"url": "https://example.com/h", "events": ["webhook.test"]}, "unknown_event", "events"),
    ({"url": "https://example.com/h", "events": []}, "invalid_request", "events"),
    ({"url": "https://example.com/h", "events": "session.completed"}, "invalid_request", "events"),
    ({"url": "https://example.com/h"}, "invalid_request", "events"),
    (["https://example.com/h"], "invalid_request", None),
])
async def test_bad_input_is_a_400_in_openai_error_shape(make_server, http, body, code, param):
    server = await make_server()  # not dev_mode: https and public addresses only
    async with http.put(server.url + "/v1/webhook", json=body,
                        headers=auth(server.admin_key)) as resp:
        answer = await resp.json()
    assert resp.status == 400, answer
    documented("PUT", "/v1/webhook", 400, answer)
    error = answer["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error", code, param), error
    assert error["message"]
    assert await server.app[BILLING].db.webhook_endpoint(server.account_id) is None


async def test_catch_up_queues_the_events_no_hook_queued(make_server, receiver, http):
    """Sessions completed without the gateway's hook (a sweep completing a
    dead process's sessions writes the store only) get their event from
    ``Notifier.catch_up_sessions`` (the scheduled job), once; not those
    that ended before the endpoint was set, nor within the grace period."""
    from tests.billing.conftest import add_sessions

    server = await make_server(**FAST_OUTBOX)
    store, svc = server.store, server.app[BILLING]
    now = time.time()
    (before,) = await add_sessions(store, server.gateway.catalog, server.account_id,
                                   server.project_id, billable=0, not_billable=1,
                                   started_at=now - 600)
    secret = (await put_webhook(http, server, receiver.url, ["session.completed"]))["secret"]
    set_at = time.time()
    swept = await add_sessions(store, server.gateway.catalog, server.account_id,
                               server.project_id, billable=1, not_billable=1,
                               started_at=set_at - 20)  # each ends 30 s after its start
    # the job's clock: 30 s after the set (within the 60 s grace), then 100 s after
    assert await svc.notifier.catch_up_sessions(set_at + 30) == 0
    assert await svc.notifier.catch_up_sessions(set_at + 100) == 2
    assert await svc.notifier.catch_up_sessions(set_at + 100) == 0
    events = await eventually(lambda: receiver.has(2), timeout_s=10)
    assert sorted(e["id"] for e in events) == sorted("evt_" + sid for sid in swept)
    for (headers, body), event in zip(receiver.got, events, strict=True):
        assert verify_signature(secret, body, headers[SIGNATURE_HEADER])
        assert event["data"] == await session_json(http, server.url, server.admin_key,
                                                   event["data"]["id"])
    assert "evt_" + before not in {e["id"] for e in events}
    assert len(await session_rows(svc.db, server.account_id)) == 2


# ---------------------------------------------------------------- the docs' code


def test_docs_python_snippet_checks_signatures():
    verify = docs_verifier()
    body = b'{"id":"evt_x","type":"webhook.test","created":1,"data":{}}'
    header = sign_payload("whsec_doc", body, int(time.time()))
    assert verify("whsec_doc", body, header)
    assert not verify("whsec_other", body, header)
    assert not verify("whsec_doc", body + b" ", header)
    assert not verify("whsec_doc", body, sign_payload("whsec_doc", body, int(time.time()) - 600))
    assert not verify("whsec_doc", body, "garbage")


async def test_docs_node_receiver_gets_a_real_delivery(make_server, http, tmp_path):
    """docs/webhooks.md's Node.js receiver, as written, behind a real
    delivery: it accepts voxgate's signed events (printing each id once,
    even when resent) and refuses a forged one."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    server = await make_server(**FAST_OUTBOX)
    port = free_port()
    secret = (await put_webhook(http, server, f"http://127.0.0.1:{port}/hook",
                                ["session.completed"]))["secret"]
    script = tmp_path / "receiver.js"
    script.write_text(doc_snippet("node"))
    proc = subprocess.Popen([node, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "VOXGATE_WEBHOOK_SECRET": secret, "PORT": str(port)},
                            text=True)
    try:
        wait_port(port, 20 * SLOW, proc)
        forged = b'{"id":"evt_forged","type":"session.completed","created":1,"data":{}}'
        async with http.post(f"http://127.0.0.1:{port}/hook", data=forged, headers={
                SIGNATURE_HEADER: sign_payload("whsec_wrong", forged, int(time.time()))}) as r:
            assert r.status == 400

        session_id = await run_session(server.ws_url, server.key)
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20 * SLOW)
        printed = orjson.loads(line)
        assert printed["id"] == "evt_" + session_id and printed["type"] == "session.completed"
        assert printed["data"] == await session_json(http, server.url, server.admin_key,
                                                     session_id)
        db = server.app[BILLING].db
        (row,) = await eventually(lambda: session_rows(db, server.account_id))

        async def delivered(n: int):
            rows = await db.list_webhooks(server.account_id)
            return rows if all(r.delivered_at is not None for r in rows) and len(rows) == n \
                else None

        await eventually(lambda: delivered(1))
        # a resend reaches it (200) and is skipped as seen; then a test event is printed
        async with http.post(f"{server.url}/v1/webhook/deliveries/{row.id}/resend",
                             headers=auth(server.admin_key)) as r:
            assert r.status == 200
        async with http.post(server.url + "/v1/webhook/test",
                             headers=auth(server.admin_key)) as r:
            test_id = (await r.json())["id"]
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20 * SLOW)
        assert orjson.loads(line)["id"] == test_id
        await eventually(lambda: delivered(2))
        assert (await db.list_webhooks(server.account_id))[1].last_error is None
    finally:
        proc.terminate()
        proc.wait(10)


# ---------------------------------------------------------------- two processes

REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def fresh_pg():
    """A fresh PostgreSQL database on ``PG_URL``'s server, dropped after the test."""
    import psycopg

    name = f"vg_webhook_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_two_processes_send_one_event_per_session(tmp_path, voice_url, fresh_pg, http,
                                                         receiver):
    """Two ``voxgate serve`` processes on one PostgreSQL database (Redis
    admission), both running the outbox: sessions alternate between them,
    the receiver is down for the first ones; it gets exactly one signed
    ``session.completed`` per session, with the data of ``GET
    /v1/sessions/{id}``; queuing one again from a third client queues nothing."""
    from redis.asyncio import Redis

    from tests.billing.conftest import add_sessions
    from tests.served import load, new_key, serve, settings_env
    from voxgate.billing.db import BillingDB
    from voxgate.models import load_catalog
    from voxgate.store import open_store

    catalog = tmp_path / "catalog.toml"
    catalog.write_text(TEST_CATALOG)
    prefix = f"voxgate-test-{uuid.uuid4().hex[:8]}:"
    env = settings_env(tmp_path / "data", voice_url, catalog, database_url=fresh_pg,
                       admission_url=REDIS_URL, admission_prefix=prefix, drain_timeout_s="1",
                       dev_mode="true", smtp__send_interval_s="0.2",
                       billing__retry_base_s="0.2", billing__retry_max_s="0.5")
    account_id, project_id, key = await new_key(env, "roomy")
    store = open_store(load(env))
    await store.open()
    served = []
    try:
        _, admin_key = await store.create_admin_key(account_id, "test")
        served = list(await asyncio.gather(*(
            asyncio.to_thread(serve, {**env, "VOXGATE_INSTANCE_ID": f"node-{n}"},
                              tmp_path / f"serve-{n}.log") for n in "ab")))
        a, b = served
        await receiver.stop()  # down for the first sessions
        async with http.put(a.url + "/v1/webhook", headers=auth(admin_key), json={
                "url": receiver.url, "events": ["session.completed"]}) as resp:
            assert resp.status == 200
            secret = (await resp.json())["secret"]
        ids = [await run_session(s.ws_url, key) for s in (a, b, a, b)]
        db = BillingDB(store)

        async def failing():
            rows = await session_rows(db, account_id)
            return rows if len(rows) == 4 and all(r.attempts >= 2 for r in rows) else None

        await eventually(failing, timeout_s=20)
        await receiver.start()
        ids += [await run_session(s.ws_url, key) for s in (b, a)]

        async def all_delivered():
            rows = await session_rows(db, account_id)
            return rows if len(rows) == 6 and all(r.delivered_at is not None for r in rows) \
                else None

        await eventually(all_delivered, timeout_s=20)
        events = receiver.events()
        assert sorted(e["id"] for e in events) == sorted("evt_" + sid for sid in ids)
        for headers, body in receiver.got:
            assert verify_signature(secret, body, headers[SIGNATURE_HEADER])
        for event in events:
            sid = event["data"]["id"]
            assert event["id"] == "evt_" + sid
            assert event["data"] == await session_json(http, b.url, admin_key, sid)
        # a third client on the same database queues nothing more
        notifier = Notifier(load(env), db)
        assert not await notifier.session_completed(account_id, events[0]["data"])
        assert await notifier.catch_up_sessions(time.time() + 100) == 0
        assert len(await session_rows(db, account_id)) == 6
        # a session completed in the store only (as a sweep does): the
        # catch-up queues it, one of the two processes delivers it, once
        (swept,) = await add_sessions(store, load_catalog(catalog), account_id, project_id,
                                      billable=1, not_billable=0, started_at=time.time())
        assert await notifier.catch_up_sessions(time.time() + 100) == 1
        assert await notifier.catch_up_sessions(time.time() + 100) == 0

        async def seven_delivered():
            rows = await session_rows(db, account_id)
            return rows if len(rows) == 7 and all(r.delivered_at is not None for r in rows) \
                else None

        await eventually(seven_delivered, timeout_s=20)
        assert sorted(e["id"] for e in receiver.events()) == sorted(
            "evt_" + sid for sid in [*ids, swept])
    finally:
        for s in served:
            s.stop()
        await store.close()
        redis = Redis.from_url(REDIS_URL)
        keys = [k async for k in redis.scan_iter(match=prefix + "*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()

