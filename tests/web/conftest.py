"""Dashboard fixtures: a catalog with priced plans, and ``WebClient``, an
aiohttp client that signs up or in through the real forms (cookies and
CSRF tokens included), enrolls two-factor sign-in and computes its codes
with ``pyotp`` like an authenticator app (at the test servers' TOTP
clock, ``tests.conftest.TOTP_CLOCK``)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import aiohttp
import pyotp
import pytest
import pytest_asyncio

from tests.conftest import TOTP_CLOCK
from voxgate.models import Measurements, SessionRecord, Verdict, new_id
from voxgate.store.base import period_of

WEB_CATALOG = """
minutes_per_session = 2.0
default_plan = "tiny"

[plans.tiny]
name = "Tiny"
sessions_included = 2
concurrency = 2
requests_per_minute = 1000
projects = 2

[plans.free]
name = "Free"
sessions_included = 100
concurrency = 1
projects = 1

[plans.starter]
name = "Starter"
price_cents = 2900
sessions_included = 5000
concurrency = 10
projects = 3
support = "Email"

[plans.growth]
name = "Growth"
price_cents = 9900
sessions_included = 20000
concurrency = 50
projects = 10
support = "Priority"

[plans.payg]
name = "Pay as you go"
sessions_included = 0
overage_cents = 10
"""

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]*)"')
SECRET_RE = re.compile(r'id="totp-secret" class="mono" readonly value="([A-Z2-7]+)"')
RECOVERY_RE = re.compile(r"\b[0-9a-f]{5}-[0-9a-f]{5}\b")
_LAST_STEP: dict[str, int] = {}  # secret → last time step a code was made for


def totp_code(secret: str) -> str:
    """The code an authenticator app shows for ``secret`` at ``TOTP_CLOCK``
    (the test servers' TOTP clock). The server accepts a step once, so when
    this step's code was already made, the clock first moves on one step
    (what waiting 30 s for the next code would do)."""
    if _LAST_STEP.get(secret, -1) >= TOTP_CLOCK.step:
        TOTP_CLOCK.step = _LAST_STEP[secret] + 1
    _LAST_STEP[secret] = TOTP_CLOCK.step
    return pyotp.TOTP(secret).at(TOTP_CLOCK.now())


@pytest.fixture
def catalog_path(tmp_path) -> Path:
    path = tmp_path / "web-catalog.toml"
    path.write_text(WEB_CATALOG)
    return path


class WebClient:
    """A browser-like HTTP client of one user."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str, **kw) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.get(self.base + path, allow_redirects=False, **kw) as resp:
            text = await resp.text()
        m = CSRF_RE.search(text)
        if m:
            self.csrf = m.group(1)
        return resp.status, text, resp

    async def post(self, path: str, data: dict | None = None, *, csrf: bool = True,
                   **kw) -> tuple[int, str, aiohttp.ClientResponse]:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf_token", self.csrf)
        async with self.http.post(self.base + path, data=form, allow_redirects=False,
                                  **kw) as resp:
            text = await resp.text()
        m = CSRF_RE.search(text)
        if m:
            self.csrf = m.group(1)
        return resp.status, text, resp

    async def signup(self, email: str, password: str = "correct horse") -> None:
        await self.get("/signup")
        status, text, resp = await self.post("/signup", {"email": email, "password": password,
                                                         "name": email.split("@")[0]})
        assert status == 303, text
        await self.get("/dashboard")  # the signed-in session's CSRF token

    async def signin(self, email: str, password: str, totp_secret: str | None = None) -> int:
        """Sign in through the forms; with ``totp_secret``, answer the code
        form too. Returns the status of the last POST."""
        await self.get("/signin")
        status, _, resp = await self.post("/signin", {"email": email, "password": password})
        if status == 303 and resp.headers["Location"] == "/signin/2fa" and totp_secret:
            await self.get("/signin/2fa")
            status, _, resp = await self.post("/signin/2fa",
                                              {"code": totp_code(totp_secret)})
        if status == 303:
            await self.get("/dashboard")
        return status

    async def enroll_2fa(self) -> tuple[str, list[str]]:
        """Turn on two-factor sign-in from ``/account/2fa``: (secret,
        recovery codes)."""
        status, text, _ = await self.get("/account/2fa")
        assert status == 200, text
        secret = SECRET_RE.search(text).group(1)
        status, text, _ = await self.post("/account/2fa", {"action": "confirm",
                                                           "code": totp_code(secret)})
        assert status == 200 and "shown only once" in text, text
        return secret, RECOVERY_RE.findall(text)


@pytest_asyncio.fixture
async def clients():
    """Factory of ``WebClient``s, closed at the end."""
    made: list[WebClient] = []

    def factory(server) -> WebClient:
        client = WebClient(server.url)
        made.append(client)
        return client

    yield factory
    for c in made:
        await c.close()


async def add_session(store, account_id: str, project_id: str, *, billable: bool = True,
                      started_at: float | None = None, duration_ms: float = 60_000.0,
                      reason: str | None = None) -> str:
    """A completed session written straight to the store."""
    started_at = time.time() - 60 if started_at is None else started_at
    m = Measurements(connected=True, connect_ms=120.0, duration_ms=duration_ms,
                     audio_in_ms=6000.0, audio_out_ms=3000.0, closed_by="client",
                     close_code=1000)
    record = SessionRecord(id=new_id("sess"), account_id=account_id, project_id=project_id,
                           transport="websocket", started_at=started_at,
                           ended_at=started_at + duration_ms / 1000, period=period_of(started_at),
                           model="gpt-realtime", measurements=m)
    reason = reason or ("billable" if billable else "too_short")
    await store.complete_session(record, Verdict(billable, reason, f"rule for {reason}"))
    return record.id


async def account_of(server, email: str):
    return await server.store.get_account_by_email(email)
