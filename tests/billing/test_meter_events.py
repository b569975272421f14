"""Meter-event settlement against a loopback fake of
``POST /v1/billing/meter_events`` that keeps ``identifier`` unique like
Stripe (localstripe has no meters). Faults come from the fake: a 500 before
recording, and a 500 *after* recording (the answer lost on the way back)."""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

import orjson
import pytest
from aiohttp import web

from tests.billing.conftest import add_sessions, eventually
from tests.conftest import free_port
from voxgate.billing.settlement import NO_CUSTOMER, meter_event_params


class FakeMeter:
    """Stripe's meter-event endpoint, and nothing else.

    ``fail_before`` / ``fail_after``: how many upcoming requests answer 500
    without recording / after recording the event."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, str]] = {}
        self.requests: list[dict[str, str]] = []
        self.idempotency_keys: list[str | None] = []
        self.fail_before = 0
        self.fail_after = 0
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl(await request.text()))
        self.requests.append(form)
        self.idempotency_keys.append(request.headers.get("Idempotency-Key"))
        if self.fail_before:
            self.fail_before -= 1
            return _error(500, "api_error", "internal error")
        identifier = form.get("identifier", "")
        if identifier in self.events:
            return _error(400, "invalid_request_error",
                          f"An event already exists with identifier {identifier}.")
        self.events[identifier] = form
        if self.fail_after:
            self.fail_after -= 1
            return _error(500, "api_error", "internal error")
        return web.json_response({"object": "billing.meter_event", "identifier": identifier,
                                  "event_name": form["event_name"],
                                  "timestamp": int(form["timestamp"]), "payload": {}})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/billing/meter_events", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.Response(status=status, content_type="application/json",
                        body=orjson.dumps({"error": {"type": kind, "message": message}}))


@pytest.fixture
async def fake_meter():
    fake = FakeMeter()
    await fake.start()
    yield fake
    await fake.stop()


def test_meter_event_params():
    assert meter_event_params("voxgate_billable_sessions", "cus_1", "sess_1", 1700000000.9) == {
        "event_name": "voxgate_billable_sessions",
        "payload": {"stripe_customer_id": "cus_1", "value": "1"},
        "identifier": "sess_1",
        "timestamp": 1700000000,
    }


async def test_exactly_one_event_per_session_through_faults(fake_meter, make_billing_server):
    server = await make_billing_server(api_base=fake_meter.url, plan="pro")
    store, svc = server.store, server.billing
    await store.update_account(server.account_id, stripe_customer_id="cus_M")
    # pro: 3 included, so 4 of these 7 billable sessions are charged
    ids = await add_sessions(store, server.catalog, server.account_id, server.project_id,
                             billable=7, not_billable=2, started_at=time.time() - 600)
    charged = ids[3:7]

    fake_meter.fail_before = 1  # the first request: 500, nothing recorded
    fake_meter.fail_after = 1  # the second: recorded, but the answer is a 500
    now = time.time()
    assert await svc.settlement.run_once(now) == {"settled": 2, "failed": 2}
    pending = await svc.db.outbox_errors(server.account_id)
    assert [(s, a) for s, a, _ in pending] == [(charged[0], 1), (charged[1], 1)]
    assert all("unavailable" in e for _, _, e in pending)
    # not due yet: backing off
    assert await svc.settlement.run_once(now + 0.01) == {"settled": 0, "failed": 0}
    # retried: one is sent for the first time, the other is a duplicate for
    # Stripe, which proves it was recorded: both settle
    assert await svc.settlement.run_once(now + 1) == {"settled": 2, "failed": 0}
    assert await svc.db.outbox_errors(server.account_id) == []

    assert sorted(fake_meter.events) == sorted(charged)
    for session_id, form in fake_meter.events.items():
        record = await store.get_session(session_id)
        assert form == {"event_name": "voxgate_billable_sessions",
                        "payload[stripe_customer_id]": "cus_M", "payload[value]": "1",
                        "identifier": session_id, "timestamp": str(int(record.ended_at))}
        assert (record.settlement, record.settlement_ref) == ("charged", session_id)
    assert [(await store.get_session(i)).settlement for i in ids] == (
        ["included"] * 3 + ["charged"] * 4 + ["none"] * 2)
    assert set(fake_meter.idempotency_keys) == {f"voxgate-meter-{i}" for i in charged}
    assert len(fake_meter.requests) == 6  # 4 sessions + 2 retries, nothing more
    assert await svc.settlement.run_once(now + 100) == {"settled": 0, "failed": 0}


async def test_background_worker_and_missing_customer(fake_meter, make_billing_server):
    server = await make_billing_server(api_base=fake_meter.url, plan="payg",
                                       billing={"settle_interval_s": 0.05})
    store, svc = server.store, server.billing
    ids = await add_sessions(store, server.catalog, server.account_id, server.project_id,
                             billable=2, not_billable=1, started_at=time.time() - 60)

    async def no_customer():
        pending = await svc.db.outbox_errors(server.account_id)
        return pending if len(pending) == 2 and all(e == NO_CUSTOMER for _, _, e in pending) \
            else None

    await eventually(no_customer)
    assert fake_meter.requests == []
    await store.update_account(server.account_id, stripe_customer_id="cus_late")

    async def settled():
        return not await svc.db.outbox_errors(server.account_id)

    await eventually(settled)
    assert sorted(fake_meter.events) == sorted(ids[:2])
    assert (await store.get_session(ids[2])).settlement == "none"
