"""Quota alerts at 80/95/100 %: exactly once each, queued while the mail
server is down and delivered to a real loopback SMTP server once it is up;
the same alerts to the customer's signed webhook."""

from __future__ import annotations

import asyncio
import email
import time
from email import policy

import pytest
from aiohttp import web

from tests.billing.conftest import eventually
from tests.conftest import free_port
from voxgate.billing.notify import (
    SIGNATURE_HEADER,
    quota_alert_email,
    sign_payload,
    thresholds_reached,
    verify_signature,
)
from voxgate.models import (
    Measurements,
    Principal,
    SessionRecord,
    Verdict,
    load_catalog,
    new_id,
)
from voxgate.proxy.gateway import ActiveSession
from voxgate.proxy.keys import SETTINGS
from voxgate.store.base import period_of


class SmtpSink:
    """A minimal SMTP server (RFC 5321: EHLO/HELO, MAIL, RCPT, DATA, QUIT)
    that keeps every message it accepts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        say("220 sink ESMTP")
        sender, rcpts = "", []
        try:
            while line := await reader.readline():
                cmd = line.decode().strip()
                verb = cmd[:4].upper()
                if verb == "EHLO":
                    say("250-sink")
                    say("250 8BITMIME")
                elif verb == "HELO":
                    say("250 sink")
                elif verb == "MAIL":
                    sender, rcpts = cmd.split(":", 1)[1].strip(" <>"), []
                    say("250 OK")
                elif verb == "RCPT":
                    rcpts.append(cmd.split(":", 1)[1].strip(" <>"))
                    say("250 OK")
                elif verb == "DATA":
                    say("354 end with .")
                    await writer.drain()
                    data = bytearray()
                    while (chunk := await reader.readline()) not in (b".\r\n", b""):
                        data += chunk[1:] if chunk.startswith(b"..") else chunk
                    self.messages.append((sender, rcpts, bytes(data)))
                    say("250 queued")
                elif verb == "QUIT":
                    say("221 bye")
                    await writer.drain()
                    break
                else:
                    say("250 OK")
                await writer.drain()
        finally:
            writer.close()


def test_thresholds_and_texts():
    catalog = load_catalog()
    free = catalog.get("free")  # 100 included, hard cap
    assert [a.threshold for a in thresholds_reached(free, 79)] == []
    assert [a.threshold for a in thresholds_reached(free, 80)] == [80]
    assert [a.threshold for a in thresholds_reached(free, 95)] == [80, 95]
    assert [a.threshold for a in thresholds_reached(free, 100)] == [80, 95, 100]
    subject, body = quota_alert_email(free, thresholds_reached(free, 100)[-1], "2026-01",
                                      "https://vox.example/billing")
    assert "used all 100 sessions" in subject
    assert "refused" in body and "https://vox.example/billing" in body
    assert thresholds_reached(catalog.get("starter").__class__(id="u", name="U"), 10**6) == []


def test_signature_roundtrip():
    body = b'{"type":"quota_warning"}'
    header = sign_payload("whsec_x", body, 1700000000)
    assert verify_signature("whsec_x", body, header, now=1700000010)
    assert not verify_signature("whsec_y", body, header, now=1700000010)
    assert not verify_signature("whsec_x", body + b" ", header, now=1700000010)
    assert not verify_signature("whsec_x", body, header, now=1700000400)  # stale


@pytest.fixture
async def receiver():
    """A customer's webhook endpoint: records (headers, body)."""
    got: list[tuple[dict, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/hook", got
    await runner.cleanup()


async def _complete_billable(server, principal, plan) -> None:
    """One billable session completed through the store, then the gateway's
    ``on_completed`` hooks with the usage it returned (as ``finish`` does)."""
    now = time.time()
    record = SessionRecord(id=new_id("sess"), account_id=server.account_id,
                           project_id=server.project_id, transport="websocket",
                           started_at=now - 30, period=period_of(now), ended_at=now,
                           measurements=Measurements(connected=True, duration_ms=30000,
                                                     audio_in_ms=20000))
    verdict = Verdict(True, "billable", "test")
    usage = await server.store.complete_session(record, verdict)
    active = ActiveSession(record=record, principal=principal, plan=plan, lease=None,
                           meter=None)
    for hook in server.gateway.on_completed:
        await hook(active, verdict, usage)


async def test_quota_alerts_once_each_queued_while_smtp_is_down(make_billing_server, http,
                                                                 receiver):
    smtp_port = free_port()  # nothing listens yet
    server = await make_billing_server(
        plan="starter", public_url="https://vox.example", dev_mode=True,  # a loopback receiver
        smtp={"host": "127.0.0.1", "port": smtp_port, "timeout_s": 2.0})
    url, got = receiver
    async with http.put(server.url + "/billing/alerts-webhook", json={"url": url},
                        headers=server.headers()) as resp:
        assert resp.status == 200
        secret = (await resp.json())["secret"]
    found = await server.store.find_api_key(server.key)
    principal = Principal(account=found[2], project=found[1], api_key=found[0])
    plan = server.catalog.get("starter")  # 20 included: alerts at 16, 19 and 20
    db = server.billing.db

    sent_at: dict[int, int] = {}
    for n in range(1, 23):
        await _complete_billable(server, principal, plan)
        for threshold in await db.quota_alerts(server.account_id, period_of()):
            sent_at.setdefault(threshold, n)
    assert sent_at == {80: 16, 95: 19, 100: 20}

    async def failing():
        emails = await db.list_emails(server.account_id)
        return emails if len(emails) == 3 and all(e.attempts >= 1 for e in emails) else None

    emails = await eventually(failing)
    assert [e.kind for e in emails] == ["quota_warning", "quota_warning", "quota_exhausted"]
    assert all(e.sent_at is None and "Connect" in (e.last_error or "") for e in emails)

    sink = SmtpSink(smtp_port)
    await sink.start()
    try:
        await eventually(lambda: _all_sent(db, server.account_id), timeout_s=5)
        assert len(sink.messages) == 3
        parsed = [email.message_from_bytes(data, policy=policy.default)
                  for _, _, data in sink.messages]
        account = await server.store.get_account(server.account_id)
        assert all(rcpts == [account.email] for _, rcpts, _ in sink.messages)
        subjects = [m["Subject"] for m in parsed]
        assert subjects == ["voxgate: 80% of your Starter plan's sessions used",
                            "voxgate: 95% of your Starter plan's sessions used",
                            "voxgate: you have used all 20 sessions of your Starter plan"]
        assert all("https://vox.example/billing" in m.get_content() for m in parsed)
        # more sessions: no new alert, nothing more sent
        await _complete_billable(server, principal, plan)
        await asyncio.sleep(0.3)
        assert len(sink.messages) == 3
    finally:
        await sink.stop()

    await eventually(lambda: _len_at_least(got, 3))
    assert len(got) == 3
    for headers, body in got:
        assert verify_signature(secret, body, headers[SIGNATURE_HEADER])
    import orjson

    kinds = [(orjson.loads(b)["type"], orjson.loads(b)["data"]["threshold"]) for _, b in got]
    assert kinds == [("quota_warning", 80), ("quota_warning", 95), ("quota_exhausted", 100)]


async def _all_sent(db, account_id) -> bool:
    emails = await db.list_emails(account_id)
    return bool(emails) and all(e.sent_at is not None for e in emails)


async def _len_at_least(items, n) -> bool:
    return len(items) >= n


async def test_empty_smtp_host_keeps_mail_queued(make_billing_server):
    server = await make_billing_server()
    db = server.billing.db
    account = await server.store.get_account(server.account_id)
    await server.billing.notifier.welcome(account, server.catalog.get("starter"), "sub_1")
    await server.billing.notifier.welcome(account, server.catalog.get("starter"), "sub_1")
    assert await server.billing.outbox.run_once() == {"emails": 0, "webhooks": 0}
    emails = await db.list_emails(server.account_id)
    assert [(e.kind, e.attempts, e.sent_at) for e in emails] == [("welcome", 0, None)]


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:{port}/hook",            # http, loopback
    "https://127.0.0.1:{port}/hook",           # loopback
    "https://localhost:{port}/hook",           # a name that resolves to loopback
    "https://10.1.2.3/internal/admin",         # private
    "https://169.254.169.254/latest/meta-data",  # cloud metadata (link-local)
    "https://[::1]:{port}/hook",               # IPv6 loopback
    "https://[::ffff:127.0.0.1]:{port}/hook",  # IPv4-mapped loopback
    "https://user@example.com/hook",           # user info
    "ftp://example.com/hook",
])
async def test_ssrf_alerts_webhook_to_internal_addresses_refused(make_billing_server, http,
                                                                 receiver, url):
    """The customer's webhook URL cannot point voxgate at its own network."""
    hook_url, got = receiver
    port = hook_url.split(":")[2].split("/")[0]
    server = await make_billing_server(plan="starter")
    async with http.put(server.url + "/billing/alerts-webhook",
                        json={"url": url.format(port=port)}, headers=server.headers()) as resp:
        body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "unsafe_url", body
    assert await server.billing.db.account_webhook(server.account_id) is None
    assert got == []


async def test_ssrf_checked_again_at_delivery(make_billing_server, receiver):
    """A URL stored earlier (here: written straight to the store, as one set
    in development mode would be) is checked again when delivering: nothing
    reaches the loopback receiver, and the delivery is recorded as failed."""
    url, got = receiver
    server = await make_billing_server(plan="starter")
    db = server.billing.db
    await db.set_account_webhook(server.account_id, url, "whsec_test")
    await server.billing.notifier.webhook(server.account_id, "quota_warning", {"percent": 80})
    from voxgate.billing.notify import OutboxWorker

    worker = OutboxWorker(server.app[SETTINGS], db)  # what the server's own worker runs
    try:
        assert (await worker.run_once())["webhooks"] == 0
    finally:
        await worker.close()
    assert got == []
    (pending,) = await db.due_webhooks(time.time() + 3600)  # kept, to retry
    assert pending.attempts >= 1


async def test_alerts_webhook_needs_the_account_owner(make_billing_server, http):
    """A project key (or a browser's ephemeral key) cannot set the account's
    webhook and read its signing secret."""
    server = await make_billing_server(plan="starter")
    async with http.put(server.url + "/billing/alerts-webhook",
                        json={"url": "https://example.com/hook"},
                        headers=server.headers(server.key)) as resp:
        assert resp.status == 403
        assert "secret" not in await resp.text()
