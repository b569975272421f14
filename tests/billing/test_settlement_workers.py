"""Settlement with two workers in two OS processes on one database (SQLite
file and PostgreSQL): each billable session is settled exactly once, also
when one worker is killed with SIGKILL in the middle of its batch. Both
settlement modes (``billing.settlement_mode``):

``invoice_items`` against a real localstripe, through ``IdempotentFront``,
which adds what localstripe lacks and Stripe has, ``Idempotency-Key``
replay (voxgate sends the settlement id as the key), one port per worker,
and a short hold of each answer after localstripe created the item.

``meter_events`` against ``FakeMeter`` of
tests/billing/test_meter_events.py, as the other meter-event tests do:
localstripe has no Billing Meters (``POST /v1/billing/meter_events`` is a
404 there). The fake keeps ``identifier`` unique like Stripe; here it also
listens on one port per worker (so each request is known by its sender) and
holds each answer back a little, after recording the event, so that a worker
can be killed while Stripe has its event and it has not marked it sent.
The workers are tests/billing/settle_worker.py: a meter-event pass claims 4
outbox items, an invoice-item pass every due settlement.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.billing.conftest import BILLING_CATALOG, add_sessions, last_month
from tests.billing.test_meter_events import FakeMeter
from tests.conftest import SLOW, drop_store, free_port, open_store
from voxgate.billing.db import BillingDB
from voxgate.models import load_catalog

ROOT = Path(__file__).resolve().parents[2]
BILLABLE = 40
LEASE_S = 2.0
BATCH = 4


class TwoPortMeter(FakeMeter):
    """``FakeMeter`` on two ports, one per worker; each answer leaves
    ``delay_s`` after the event is recorded (or refused as a duplicate).
    ``kill`` = (port, n, process): that process is killed with SIGKILL as
    soon as its n-th event from that port is recorded, before the answer."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.ports = (self.port, free_port())
        self.delay_s = delay_s
        self.sent: list[tuple[int, str, int]] = []  # (port, identifier, status)
        self.kill: tuple[int, int, asyncio.subprocess.Process] | None = None
        self.killed_during: str | None = None  # the identifier whose answer it never got

    def url_of(self, worker: int) -> str:
        return f"http://127.0.0.1:{self.ports[worker]}"

    async def handle(self, request: web.Request) -> web.Response:
        port = request.transport.get_extra_info("sockname")[1]
        response = await super().handle(request)
        identifier = self.requests[-1]["identifier"]
        self.sent.append((port, identifier, response.status))
        if self.kill is not None and self.kill[0] == port and response.status == 200:
            accepted = sum(1 for p, _, s in self.sent if p == port and s == 200)
            if accepted == self.kill[1]:
                self.kill[2].kill()
                self.killed_during = identifier
        await asyncio.sleep(self.delay_s)
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/billing/meter_events", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        for port in self.ports:
            await web.TCPSite(self.runner, "127.0.0.1", port).start()


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request, tmp_path):
    store = await open_store(request.param, tmp_path)
    yield store
    await drop_store(store)


@pytest.fixture
async def workers():
    """The worker processes a test started; any still running at the end is killed."""
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def meter():
    fake = TwoPortMeter(delay_s=0.05)
    await fake.start()
    yield fake
    await fake.stop()


async def _billable_sessions(store, tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """A pay-as-you-go account (every billable session charged) with
    ``BILLABLE`` billable and 5 non-billable sessions: (catalog, billable
    ids, other ids)."""
    catalog_path = tmp_path / "catalog.toml"
    catalog_path.write_text(BILLING_CATALOG)
    account = await store.create_account("workers@example.com", "payg")
    await store.update_account(account.id, stripe_customer_id="cus_workers")
    project = await store.create_project(account.id, "workers")
    ids = await add_sessions(store, load_catalog(catalog_path), account.id, project.id,
                             billable=BILLABLE, not_billable=5, started_at=time.time() - 3600)
    assert len(await store.due_outbox(time.time() + 1e9, limit=1000)) == BILLABLE
    return catalog_path, ids[:BILLABLE], ids[BILLABLE:]


async def _spawn(store, catalog: Path, mode: str, urls: list[str],
                 procs: list[asyncio.subprocess.Process]) -> list[asyncio.subprocess.Process]:
    """settle_worker processes, one per Stripe URL, each ready (not yet draining)."""
    if store.dialect.name == "postgresql":
        db, schema = store.dialect.url, store.dialect.schema
    else:
        db, schema = str(store.dialect.path), "-"
    started = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.billing.settle_worker", db, schema, str(catalog), mode,
        url, str(LEASE_S), str(BATCH), str(30 * SLOW),
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        for url in urls]
    procs.extend(started)
    for proc in started:
        line = await asyncio.wait_for(proc.stdout.readline(), 20 * SLOW)
        assert line == b"ready\n"
    return started


async def _go(proc: asyncio.subprocess.Process) -> None:
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()


async def _start_workers(store, catalog: Path, meter: TwoPortMeter,
                         procs: list[asyncio.subprocess.Process], kill_victim_at: int = 0
                         ) -> list[asyncio.subprocess.Process]:
    """Two meter-event workers, both ready; then both told to go at once.
    ``kill_victim_at`` > 0: the first is killed at that event (``TwoPortMeter.kill``)."""
    started = await _spawn(store, catalog, "meter_events", [meter.url_of(0), meter.url_of(1)],
                           procs)
    if kill_victim_at:
        meter.kill = (meter.ports[0], kill_victim_at, started[0])
    for proc in started:
        await _go(proc)
    return started


async def _finish(proc: asyncio.subprocess.Process) -> tuple[int, dict | None]:
    out, _ = await asyncio.wait_for(proc.communicate(), 40 * SLOW)
    return proc.returncode, json.loads(out) if out.strip() else None


async def _assert_settled_once(store, meter: TwoPortMeter, billable: list[str],
                               others: list[str]) -> None:
    """What Stripe holds: one event per billable session, none for the others;
    the store: every billable session ``charged``, the outbox empty."""
    assert sorted(meter.events) == sorted(billable)
    accepted = Counter(i for _, i, status in meter.sent if status == 200)
    assert set(accepted.values()) == {1}
    assert await store.due_outbox(time.time() + 1e9) == []
    for session_id in billable:
        record = await store.get_session(session_id)
        assert (record.settlement, record.settlement_ref) == ("charged", session_id)
    assert {(await store.get_session(i)).settlement for i in others} == {"none"}


async def test_two_workers_settle_each_session_once(store, meter, workers, tmp_path):
    catalog, billable, others = await _billable_sessions(store, tmp_path)
    procs = await _start_workers(store, catalog, meter, workers)
    results = [await _finish(proc) for proc in procs]

    assert [(rc, out["failed_passes"]) for rc, out in results] == [(0, 0), (0, 0)]
    settled = [out["settled"] for _, out in results]
    assert sum(settled) == BILLABLE and min(settled) > 0, settled  # both took a share
    # claims kept them apart: no session was even sent twice
    assert len(meter.sent) == BILLABLE and {s for _, _, s in meter.sent} == {200}
    by_port = Counter(p for p, _, _ in meter.sent)
    assert [by_port[p] for p in meter.ports] == settled
    await _assert_settled_once(store, meter, billable, others)


async def test_killed_worker_rows_settled_once_by_the_survivor(store, meter, workers,
                                                               tmp_path):
    catalog, billable, others = await _billable_sessions(store, tmp_path)
    victim_port, survivor_port = meter.ports
    meter.delay_s = 0.1
    procs = await _start_workers(store, catalog, meter, workers, kill_victim_at=3)
    victim_rc, _ = await _finish(procs[0])
    killed_at = time.monotonic()
    assert victim_rc == -9 and meter.killed_during is not None
    in_flight = meter.killed_during
    # Stripe has its event, the store does not know: still in the outbox,
    # claimed by the dead worker, as is the rest of its batch
    outbox = {i.session_id: i for i in await store.due_outbox(time.time() + 1e9, limit=1000)}
    assert in_flight in outbox and outbox[in_flight].next_attempt_at > time.time()

    survivor_rc, survivor_out = await _finish(procs[1])
    assert survivor_rc == 0 and survivor_out["settled"] > 0
    assert time.monotonic() - killed_at >= LEASE_S - 1.0  # it waited for the lease

    victim_sent = [i for p, i, _ in meter.sent if p == victim_port]
    survivor_sent = [i for p, i, _ in meter.sent if p == survivor_port]
    assert victim_sent[-1] == in_flight and len(victim_sent) == 3
    # the one resend is the event whose answer the victim never got: Stripe
    # refused it as a duplicate, which settled it
    assert [(i, s) for p, i, s in meter.sent if s != 200] == [(in_flight, 400)]
    assert in_flight in survivor_sent
    assert len(meter.sent) == BILLABLE + 1
    await _assert_settled_once(store, meter, billable, others)


# ---------------------------------------------------------------- invoice items, localstripe

ACCOUNTS = 12
PER_ACCOUNT = 3


class IdempotentFront:
    """``POST /v1/invoiceitems`` passed on to localstripe, on two ports (one
    per worker), keeping the one thing of Stripe that localstripe lacks:
    ``Idempotency-Key`` (a second request with a key answers the first's
    response without creating anything,
    https://docs.stripe.com/api/idempotent_requests). Each answer leaves
    ``delay_s`` after localstripe created the item; ``kill`` as in
    ``TwoPortMeter``, counting items created through that port."""

    def __init__(self, localstripe_url: str, delay_s: float) -> None:
        self.upstream = localstripe_url
        self.ports = (free_port(), free_port())
        self.delay_s = delay_s
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.sent: list[tuple[int, str, bool]] = []  # (port, idempotency key, replayed)
        self.kill: tuple[int, int, asyncio.subprocess.Process] | None = None
        self.killed_during: str | None = None
        self.first_request = asyncio.Event()
        self._lock = asyncio.Lock()
        self.runner: web.AppRunner | None = None

    def url_of(self, worker: int) -> str:
        return f"http://127.0.0.1:{self.ports[worker]}"

    async def handle(self, request: web.Request) -> web.Response:
        port = request.transport.get_extra_info("sockname")[1]
        key = request.headers["Idempotency-Key"]
        self.first_request.set()
        async with self._lock:
            replayed = key in self.answers
            if not replayed:
                async with aiohttp.ClientSession() as http, http.post(
                        self.upstream + request.path, data=await request.read(),
                        headers={"Authorization": request.headers["Authorization"],
                                 "Content-Type": request.content_type}) as resp:
                    self.answers[key] = (resp.status, await resp.read())
        self.sent.append((port, key, replayed))
        if self.kill is not None and self.kill[0] == port and not replayed:
            if sum(1 for p, _, r in self.sent if p == port and not r) == self.kill[1]:
                self.kill[2].kill()
                self.killed_during = key
        await asyncio.sleep(self.delay_s)
        status, body = self.answers[key]
        return web.Response(status=status, body=body, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/invoiceitems", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        for port in self.ports:
            await web.TCPSite(self.runner, "127.0.0.1", port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def front(localstripe):
    fake = IdempotentFront(localstripe.url, delay_s=0.05)
    await fake.start()
    yield fake
    await fake.stop()


async def _closed_period_sessions(store, localstripe, tmp_path: Path
                                  ) -> tuple[Path, dict[str, tuple[str, list[str]]]]:
    """``ACCOUNTS`` pay-as-you-go accounts, each with a localstripe customer
    and ``PER_ACCOUNT`` billable sessions last month: (catalog, account id →
    (customer, session ids))."""
    catalog_path = tmp_path / "catalog.toml"
    catalog_path.write_text(BILLING_CATALOG)
    catalog = load_catalog(catalog_path)
    accounts = {}
    for n in range(ACCOUNTS):
        account = await store.create_account(f"inv{n}@example.com", "payg")
        customer = (await localstripe.call("POST", "/v1/customers",
                                           {"email": account.email}))["id"]
        await store.update_account(account.id, stripe_customer_id=customer)
        project = await store.create_project(account.id, "p")
        ids = await add_sessions(store, catalog, account.id, project.id, billable=PER_ACCOUNT,
                                 not_billable=1, started_at=last_month())
        accounts[account.id] = (customer, ids[:PER_ACCOUNT])
    return catalog_path, accounts


async def _assert_invoiced_once(store, localstripe, accounts) -> None:
    """What localstripe holds: one invoice item per account for its
    sessions' overage; the store: each session ``invoiced`` with that item."""
    unit = 10  # payg overage_cents
    for account_id, (customer, ids) in accounts.items():
        items = (await localstripe.call("GET", "/v1/invoiceitems", {"customer": customer}))["data"]
        assert [(i["amount"], i["metadata"]["voxgate_quantity"]) for i in items] == [
            (PER_ACCOUNT * unit, str(PER_ACCOUNT))], account_id
        records = [await store.get_session(i) for i in ids]
        assert {(r.settlement, r.settlement_ref) for r in records} == {("invoiced", items[0]["id"])}
        settlements = await BillingDB(store).list_settlements(account_id)
        assert [(s.quantity, s.status) for s in settlements] == [(PER_ACCOUNT, "created")]
    assert await store.due_outbox(time.time() + 1e9) == []


async def test_two_workers_invoice_each_period_once(store, localstripe, front, workers, tmp_path):
    catalog, accounts = await _closed_period_sessions(store, localstripe, tmp_path)
    procs = await _spawn(store, catalog, "invoice_items", [front.url_of(0), front.url_of(1)],
                         workers)
    for proc in procs:
        await _go(proc)
    results = [await _finish(proc) for proc in procs]

    assert [(rc, out["failed_passes"]) for rc, out in results] == [(0, 0), (0, 0)]
    assert sum(out["settled"] for _, out in results) == ACCOUNTS * PER_ACCOUNT
    # claims kept them apart: no invoice item was even requested twice
    assert len(front.sent) == ACCOUNTS and not any(r for _, _, r in front.sent)
    await _assert_invoiced_once(store, localstripe, accounts)


async def test_killed_worker_settlements_invoiced_once_by_the_survivor(
        store, localstripe, front, workers, tmp_path):
    catalog, accounts = await _closed_period_sessions(store, localstripe, tmp_path)
    victim, survivor = await _spawn(store, catalog, "invoice_items",
                                    [front.url_of(0), front.url_of(1)], workers)
    front.delay_s = 0.1
    front.kill = (front.ports[0], 3, victim)
    # the victim first: its pass claims every settlement; the survivor starts
    # once the victim is sending, so finds them all claimed
    await _go(victim)
    await asyncio.wait_for(front.first_request.wait(), 20 * SLOW)
    await _go(survivor)
    assert (await _finish(victim))[0] == -9 and front.killed_during is not None

    rc, out = await _finish(survivor)
    assert rc == 0 and out["settled"] == (ACCOUNTS - 2) * PER_ACCOUNT
    victim_keys = [k for p, k, _ in front.sent if p == front.ports[0]]
    survivor_sent = [(k, r) for p, k, r in front.sent if p == front.ports[1]]
    assert len(victim_keys) == 3 and victim_keys[-1] == front.killed_during
    # the one repeat is the item whose answer the victim never got: the
    # Idempotency-Key made it the same item
    assert [k for k, replayed in survivor_sent if replayed] == [front.killed_during]
    assert len(survivor_sent) == ACCOUNTS - 2
    await _assert_invoiced_once(store, localstripe, accounts)
