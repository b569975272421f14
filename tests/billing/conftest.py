"""Billing fixtures: a real ``localstripe`` process on a free loopback port,
voxgate servers wired to it (webhook registered through
``/_config/webhooks``), helpers to sign Stripe events and to write real
session rows through the store.

Timeouts scale from ``tests.conftest.SLOW``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio

from tests.conftest import SLOW, Server, free_port, merge_settings, start_server, wait_port
from voxgate.models import Measurements, SessionRecord, Verdict, new_id
from voxgate.store.base import period_of

LOCALSTRIPE = Path(sys.executable).parent / "localstripe"
SECRET_KEY = "sk_test_voxgate"
WEBHOOK_SECRET = "whsec_voxgate_test"

BILLING_CATALOG = """
minutes_per_session = 2.0
default_plan = "free"

[plans.free]
name = "Free"
sessions_included = 10
concurrency = 1
requests_per_minute = 10000

[plans.starter]
name = "Starter"
price_cents = 2900
sessions_included = 20
concurrency = 5
requests_per_minute = 10000
trial_days = 14

[plans.growth]
name = "Growth"
price_cents = 9900
sessions_included = 100
concurrency = 20
requests_per_minute = 10000

[plans.pro]
name = "Pro"
price_cents = 2900
sessions_included = 3
overage_cents = 7
concurrency = 5
requests_per_minute = 10000

[plans.payg]
name = "Pay as you go"
sessions_included = 0
overage_cents = 10
requests_per_minute = 10000

[packs.small]
name = "+2 sessions"
sessions = 2
price_cents = 500

[packs.sessions_1000]
sessions = 1000
price_cents = 900

[legacy]
build = "starter"
agency = "growth"
"""


async def eventually(check, timeout_s: float = 5.0, interval_s: float = 0.05):
    """Await ``check()`` until it returns a truthy value; return it."""
    deadline = time.monotonic() + timeout_s * SLOW
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s * SLOW} s: {result!r}")
        await asyncio.sleep(interval_s)


class LocalStripe:
    """A localstripe process. ``stop()``/``start()`` keep the port (its data
    does not survive a restart)."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as fh:
            self.proc = subprocess.Popen(
                [str(LOCALSTRIPE), "--port", str(self.port), "--from-scratch"],
                stdout=fh, stderr=subprocess.STDOUT)
        wait_port(self.port, 20 * SLOW, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    async def call(self, method: str, path: str, data: dict[str, Any] | None = None) -> Any:
        """One Stripe API call, form-encoded like the SDKs do."""
        form = _flatten(data or {})
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.url + path, data=form if method != "GET" else None,
                                    params=form if method == "GET" else None,
                                    headers={"Authorization": f"Bearer {SECRET_KEY}"}) as resp:
                body = await resp.json(content_type=None) if resp.content_length != 0 else None
                if resp.status >= 400:
                    raise AssertionError(f"{method} {path} → {resp.status}: {body}")
                return body

    async def register_webhook(self, url: str, secret: str = WEBHOOK_SECRET) -> None:
        await self.call("POST", "/_config/webhooks/voxgate", {"url": url, "secret": secret})

    async def customer_with_card(self, email: str, card: str = "4242424242424242") -> str:
        """A customer whose default payment method is ``card``."""
        customer = await self.call("POST", "/v1/customers", {"email": email})
        await self.set_card(customer["id"], card)
        return customer["id"]

    async def set_card(self, customer: str, card: str) -> None:
        pm = await self.call("POST", "/v1/payment_methods", {
            "type": "card", "card": {"number": card, "exp_month": "12", "exp_year": "2030",
                                     "cvc": "123"}})
        await self.call("POST", f"/v1/payment_methods/{pm['id']}/attach", {"customer": customer})
        await self.call("POST", f"/v1/customers/{customer}",
                        {"invoice_settings": {"default_payment_method": pm["id"]}})


def _flatten(data: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}[{k}]" if prefix else str(k)))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.update(_flatten(v, f"{prefix}[{i}]"))
    elif isinstance(data, bool):
        out[prefix] = "true" if data else "false"
    elif data is not None:
        out[prefix] = str(data)
    return out


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header for ``payload``."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def stripe_event(event_type: str, obj: dict[str, Any], event_id: str | None = None) -> bytes:
    return orjson.dumps({"id": event_id or new_id("evt"), "object": "event", "type": event_type,
                         "created": int(time.time()), "data": {"object": obj}})


async def post_event(http: aiohttp.ClientSession, server: Server, payload: bytes,
                     signature: str | None = None) -> tuple[int, Any]:
    headers = {"Stripe-Signature": signature if signature is not None else sign(payload),
               "Content-Type": "application/json"}
    async with http.post(server.url + "/webhooks/stripe", data=payload, headers=headers) as resp:
        return resp.status, await resp.json()


async def add_sessions(store, catalog, account_id: str, project_id: str, *, billable: int,
                       not_billable: int, started_at: float) -> list[str]:
    """Real session rows (open, then complete with a verdict), settled like
    the gateway does: ``settle`` when the plan charges the session."""
    ids = []
    verdicts = [True] * billable + [False] * not_billable
    for i, is_billable in enumerate(verdicts):
        account = await store.get_account(account_id)
        plan = catalog.get(account.plan_id)
        t0 = started_at + i
        record = SessionRecord(id=new_id("sess"), account_id=account_id, project_id=project_id,
                               transport="websocket", started_at=t0, period=period_of(t0))
        await store.open_session(record)
        record.ended_at = t0 + 30
        record.status = "completed"
        record.measurements = Measurements(connected=is_billable, duration_ms=30000,
                                           audio_in_ms=20000 if is_billable else 0)
        verdict = Verdict(is_billable, "billable" if is_billable else "too_short", "test")
        settle = False
        if is_billable and plan.overage_cents is not None:
            before = await store.get_usage(account_id, record.period)
            settle = plan.charges_session(before.billable_sessions)
        await store.complete_session(record, verdict, settle=settle)
        ids.append(record.id)
    return ids


def last_month(now: float | None = None) -> float:
    """A Unix time in the previous period (the 10th, noon UTC)."""
    import calendar

    t = time.gmtime(time.time() if now is None else now)
    year, month = (t.tm_year - 1, 12) if t.tm_mon == 1 else (t.tm_year, t.tm_mon - 1)
    return float(calendar.timegm((year, month, 10, 12, 0, 0)))


@pytest.fixture
def billing_catalog(tmp_path) -> Path:
    path = tmp_path / "billing-catalog.toml"
    path.write_text(BILLING_CATALOG)
    return path


@pytest.fixture(scope="module")
def localstripe(tmp_path_factory):
    ls = LocalStripe(tmp_path_factory.mktemp("localstripe") / "localstripe.log")
    ls.start()
    yield ls
    ls.stop()


@dataclass
class BillingServer(Server):
    @property
    def billing(self):
        from voxgate.billing.service import BILLING

        return self.app[BILLING]

    @property
    def catalog(self):
        return self.gateway.catalog

    def headers(self, key: str | None = None) -> dict[str, str]:
        """Authorization for the billing routes (the account's admin key by default)."""
        return {"Authorization": f"Bearer {key or self.admin_key}"}


@pytest_asyncio.fixture
async def make_billing_server(tmp_path, billing_catalog):
    """Factory: ``await make_billing_server(api_base=..., plan="free", **overrides)``."""
    servers: list[BillingServer] = []

    async def factory(api_base: str = "", plan: str = "free", billing: dict | None = None,
                      **overrides: Any) -> BillingServer:
        base: dict[str, Any] = {
            "data_dir": str(tmp_path / f"data{len(servers)}"),
            "catalog": str(billing_catalog),
            "port": free_port(),
            "upstream": {"provider": "local", "url": "ws://127.0.0.1:9/v1/realtime"},
            "billing": {
                "stripe_secret_key": SECRET_KEY,
                "stripe_webhook_secret": WEBHOOK_SECRET,
                "api_base": api_base,
                "settle_interval_s": 3600.0,
                "retry_base_s": 0.1,
                "retry_max_s": 0.5,
                "grace_check_interval_s": 3600.0,
                **(billing or {}),
            },
            "smtp": {"send_interval_s": 0.1},
        }
        server = await start_server(merge_settings(base, overrides), plan,
                                    plugins=("voxgate.billing.service",), cls=BillingServer)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.runner.cleanup()


@pytest_asyncio.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session
