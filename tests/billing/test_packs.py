"""Add-on packs end to end: bought through Stripe Checkout in one-time
payment mode (localstripe has no Checkout: the recording front of
``test_checkout`` answers it, everything else is localstripe's) and credited
once by a replayed webhook; expiring 30 days after purchase (clock
injected); letting a hard-capped account past its included sessions through
real WebSocket sessions of the ``openai`` SDK and stopping at included +
pack; never charged as overage; granted from the command line."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import orjson
import pytest
from openai import AsyncOpenAI

from tests.billing.conftest import add_sessions, eventually, post_event, stripe_event
from tests.billing.test_checkout import CheckoutFront
from tests.conftest import SLOW
from voxgate.billing.addons import Addons
from voxgate.billing.db import BillingDB
from voxgate.cli import main
from voxgate.models import Measurements, SessionRecord, Verdict, new_id
from voxgate.proxy.ws_relay import SESSION_ID_HEADER
from voxgate.store.base import period_of
from voxgate.store.sql import SQLiteStore

DAY = 86400.0


@pytest.fixture
async def front(localstripe):
    f = CheckoutFront(localstripe.url)
    await f.start()
    yield f
    await f.stop()


async def usage_of(http: aiohttp.ClientSession, server) -> dict:
    async with http.get(server.url + "/billing/usage",
                        headers={"Authorization": f"Bearer {server.admin_key}"}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_pack_checkout_credits_once_and_expires_after_30_days(front, make_billing_server,
                                                                   http):
    server = await make_billing_server(api_base=front.url)
    async with http.post(server.url + "/billing/checkout", json={"pack": "small"},
                         headers=server.headers()) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["url"].endswith("cs_test_1")
    account = await server.store.get_account(server.account_id)
    b = server.billing.settings.billing
    assert front.checkouts == [{
        "mode": "payment",
        "customer": account.stripe_customer_id,
        "client_reference_id": account.id,
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "500",
        "line_items[0][price_data][product_data][name]": "voxgate +2 sessions",
        "line_items[0][quantity]": "1",
        "success_url": b.success_url,
        "cancel_url": b.cancel_url,
        "metadata[voxgate_account]": account.id,
        "metadata[voxgate_pack]": "small",
        "payment_intent_data[metadata][voxgate_account]": account.id,
        "payment_intent_data[metadata][voxgate_pack]": "small",
    }]
    async with http.post(server.url + "/billing/checkout", json={"pack": "huge"},
                         headers=server.headers()) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "unknown_pack"

    # the customer paid: Stripe sends checkout.session.completed, then replays it,
    # then sends the same session under another event id
    bought_at = int(time.time()) - 60
    session = {"id": "cs_test_1", "object": "checkout.session", "mode": "payment",
               "payment_status": "paid", "amount_total": 500, "client_reference_id": account.id,
               "customer": account.stripe_customer_id,
               "metadata": {"voxgate_account": account.id, "voxgate_pack": "small"}}
    payload = orjson.dumps({"id": "evt_pack_1", "object": "event", "created": bought_at,
                            "type": "checkout.session.completed", "data": {"object": session}})
    assert (await post_event(http, server, payload))[0] == 200
    status, body = await post_event(http, server, payload)
    assert (status, body.get("duplicate")) == (200, True)

    async def credited():
        return await server.store.list_packs(account.id)

    packs = await eventually(credited)
    other = stripe_event("checkout.session.completed", session, "evt_pack_2")
    assert (await post_event(http, server, other))[0] == 200
    await eventually(lambda: server.billing.db.event_status("evt_pack_2"))
    await server.billing.process_events()
    packs = await server.store.list_packs(account.id)
    assert len(packs) == 1
    p = packs[0]
    assert (p.sessions, p.sessions_used, p.source, p.ref, p.price_cents) == \
        (2, 0, "checkout", "cs_test_1", 500)
    assert (p.purchased_at, p.expires_at) == (bought_at, bought_at + 30 * DAY)
    actions = [a["action"] for a in await server.billing.audit_log(account.id)]
    assert actions.count("pack_purchased") == 1 and "pack_checkout_started" in actions

    usage = await usage_of(http, server)
    assert (usage["sessionsIncluded"], usage["planSessionsIncluded"],
            usage["packSessionsIncluded"], usage["packSessionsRemaining"],
            usage["packExpiresAt"]) == (12, 10, 2, 2, bought_at + 30 * DAY)
    assert usage["packs"] == [{"id": p.id, "pack": "small", "source": "checkout", "sessions": 2,
                               "sessionsRemaining": 2, "purchasedAt": bought_at,
                               "expiresAt": bought_at + 30 * DAY}]

    # 30 days later, by the injected clock: the pack no longer counts, and
    # the expiry job marks it once
    gw = server.gateway
    assert (await gw.account_plan(account, bought_at + 30 * DAY - 1)).sessions_included == 12
    assert (await gw.account_plan(account, bought_at + 30 * DAY)).sessions_included == 10
    addons = server.billing.addons
    assert await addons.expire(bought_at + 30 * DAY - 1) == []
    assert [x.id for x in await addons.expire(bought_at + 30 * DAY)] == [p.id]
    assert await addons.expire(bought_at + 31 * DAY) == []


async def test_unpaid_checkout_credits_nothing_until_async_payment_succeeds(
        front, make_billing_server, http):
    server = await make_billing_server(api_base=front.url)
    session = {"id": "cs_test_9", "object": "checkout.session", "mode": "payment",
               "payment_status": "unpaid", "client_reference_id": server.account_id,
               "metadata": {"voxgate_account": server.account_id, "voxgate_pack": "small"}}
    await post_event(http, server, stripe_event("checkout.session.completed", session))
    await server.billing.process_events()
    assert await server.store.list_packs(server.account_id) == []
    await post_event(http, server, stripe_event("checkout.session.async_payment_succeeded",
                                                {**session, "payment_status": "paid"}))
    await server.billing.process_events()
    assert [p.ref for p in await server.store.list_packs(server.account_id)] == ["cs_test_9"]


def sdk(server, key: str | None = None) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key or server.key, base_url=server.url + "/v1", max_retries=0)


async def billable_session(server, pcm: bytes) -> str:
    """A billable session through the openai SDK: 6 s of real speech, then a
    normal close; its id."""
    async with sdk(server).realtime.connect(model="gpt-realtime") as conn:
        sid = conn._connection.response.headers[SESSION_ID_HEADER]
        async with asyncio.timeout(20 * SLOW):
            async for event in conn:
                if event.type == "session.created":
                    break
        await conn.session.update(session={"type": "realtime",
                                           "audio": {"input": {"turn_detection": None}}})
        chunk = 24000 * 2 // 50
        for i in range(0, 24000 * 2 * 6, chunk):
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + chunk]).decode())
    return sid


async def refused(server) -> dict:
    """The OpenAI-style error of a refused WebSocket upgrade."""
    async with aiohttp.ClientSession() as http:
        async with http.get(server.ws_url + "?model=gpt-realtime", headers={
            "Authorization": f"Bearer {server.key}", "Connection": "Upgrade",
            "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
            assert resp.status == 429, resp.status
            return (await resp.json())["error"]


async def test_pack_lets_a_hard_capped_account_past_its_quota_then_stops(make_server, jfk_pcm,
                                                                         http):
    # "tiny": 2 sessions included, no overage (a hard cap)
    server = await make_server()
    await add_sessions(server.store, server.gateway.catalog, server.account_id,
                       server.project_id, billable=2, not_billable=0, started_at=time.time() - 600)
    assert (await refused(server))["code"] == "insufficient_quota"

    addons = Addons(server.store, BillingDB(server.store), server.gateway.catalog)
    granted = await addons.grant(server.account_id, "test", sessions=1)
    usage = await usage_of(http, server)
    assert (usage["sessionsIncluded"], usage["sessionsRemaining"],
            usage["packSessionsRemaining"]) == (3, 1, 1)

    sid = await billable_session(server, jfk_pcm)
    record = await server.session(sid)
    assert (record.billable, record.settlement) == (True, "pack"), record.rule
    assert (await refused(server))["code"] == "insufficient_quota"
    usage = await usage_of(http, server)
    assert (usage["sessionsUsed"], usage["sessionsIncluded"], usage["sessionsRemaining"],
            usage["packSessionsUsed"], usage["packSessionsRemaining"]) == (3, 3, 0, 1, 0)
    assert [(p.id, p.sessions_used) for p in await server.store.list_packs(server.account_id)] \
        == [(granted.id, 1)]


async def complete(store, account_id: str, project_id: str, *, settle_from: int | None,
                   pack_from: int | None, at: float) -> SessionRecord:
    """One billable session completed as the gateway completes it."""
    record = SessionRecord(id=new_id("sess"), account_id=account_id, project_id=project_id,
                           transport="websocket", started_at=at, ended_at=at + 30,
                           period=period_of(at))
    record.measurements = Measurements(connected=True, duration_ms=30000, audio_in_ms=20000)
    await store.complete_session(record, Verdict(True, "billable", "test"),
                                 settle_from=settle_from, pack_from=pack_from)
    return await store.get_session(record.id)


async def test_pack_sessions_are_never_charged_as_overage(tmp_path):
    async with SQLiteStore(tmp_path / "v.db") as store:
        account = await store.create_account("payg@example.com", "payg")
        project = await store.create_project(account.id, "p")
        now = time.time()
        await store.grant_pack(account.id, catalog_pack="operator", sessions=2, price_cents=0,
                               source="operator", ref="grant_1", purchased_at=now - 10)
        # pay as you go: 0 included, every billable session charged, packs first
        done = [await complete(store, account.id, project.id, settle_from=0, pack_from=0,
                               at=now + i) for i in range(3)]
        assert [r.settlement for r in done] == ["pack", "pack", "pending"]
        assert [o.session_id for o in await store.due_outbox(now + 3600)] == [done[2].id]
        balance = await store.pack_balance(account.id, period_of(now), now + 5)
        assert (balance.used_this_period, balance.remaining) == (2, 0)
        # completing a session again uses nothing more
        await store.complete_session(done[0], Verdict(True, "billable", "test"),
                                     settle_from=0, pack_from=0)
        assert (await store.list_packs(account.id))[0].sessions_used == 2


def _config(tmp_path) -> str:
    path = tmp_path / "voxgate.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    return str(path)


def test_grant_pack_from_the_command_line(tmp_path, capsys):
    import json

    config = _config(tmp_path)

    async def seed() -> str:
        async with SQLiteStore(tmp_path / "data" / "voxgate.db") as store:
            return (await store.create_account("cli@example.com", "starter")).id

    account_id = asyncio.run(seed())
    assert main(["billing", "--config", config, "grant-pack", account_id,
                 "--pack", "sessions_1000"]) == 0
    granted = json.loads(capsys.readouterr().out)
    assert (granted["account_id"], granted["pack"], granted["sessions"]) == \
        (account_id, "sessions_1000", 1000)
    assert main(["billing", "--config", config, "grant-pack", account_id, "--pack", "nope"]) == 2
    assert "catalog packs: sessions_1000, sessions_5000" in capsys.readouterr().err
    assert main(["billing", "--config", config, "grant-pack", "acct_nobody",
                 "--sessions", "5"]) == 1

    async def balance():
        async with SQLiteStore(tmp_path / "data" / "voxgate.db") as store:
            return await store.pack_balance(account_id, period_of(), time.time())

    assert asyncio.run(balance()).remaining == 1000


async def test_addon_expiry_job_and_usage_check_count_packs(tmp_path):
    """The ``addon_expiry`` job run twice at once expires a pack once; the
    daily usage-limit check sees the packs (80 of 100 + 100 sessions: no
    alert owed; 80 of 100 without a pack: the 80 % alert)."""
    from voxgate.billing.notify import Notifier
    from voxgate.config import load_settings
    from voxgate.jobs import JOBS, JobContext, check_usage_limits, expire_addon_packs
    from voxgate.models import load_catalog

    assert any(j.name == "addon_expiry" and j.run is expire_addon_packs for j in JOBS)
    settings = load_settings(None, data_dir=str(tmp_path / "data"))
    now = time.time()
    async with SQLiteStore(tmp_path / "v.db") as store:
        ctx = JobContext(store, settings, lambda: now, Notifier(settings, BillingDB(store)),
                         load_catalog())
        with_pack = await store.create_account("packed@example.com", "free")
        without = await store.create_account("plain@example.com", "free")
        await store.grant_pack(with_pack.id, catalog_pack="operator", sessions=100,
                               price_cents=0, source="operator", ref="live", purchased_at=now)
        await store.grant_pack(with_pack.id, catalog_pack="operator", sessions=5, price_cents=0,
                               source="operator", ref="old", purchased_at=now - 31 * DAY)
        assert sorted(await asyncio.gather(expire_addon_packs(ctx), expire_addon_packs(ctx))) \
            == ["0 add-on pack(s) expired", "1 add-on pack(s) expired"]
        rows = await store.db.execute_fetchall(
            "SELECT COUNT(*) FROM audit_log WHERE action = 'pack_expired'")
        assert rows[0][0] == 1

        for account in (with_pack, without):
            project = await store.create_project(account.id, "p")
            for i in range(80):
                await complete(store, account.id, project.id, settle_from=None, pack_from=100,
                               at=now - 100 + i)
        assert await check_usage_limits(ctx) == f"1 missed alert(s) sent for {period_of(now)}"
        rows = await store.db.execute_fetchall(
            "SELECT account_id, threshold FROM quota_alerts ORDER BY account_id")
        assert [tuple(r) for r in rows] == [(without.id, 80)]
