"""Shared fixtures: real speech (``tests/data``), a local voice provider process, and voxgate
servers on loopback port 0 with real SQLite files.

Timeouts scale from one constant, ``MS`` (seconds per "unit"), raised with
``VOXGATE_TEST_SLOW=2`` on slow machines.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "tests" / "data"
"""Real speech the tests stream (``tests/data``, sources and licences in its README)."""
SLOW = float(os.environ.get("VOXGATE_TEST_SLOW", "1"))
TEST_CATALOG = """
minutes_per_session = 2.0
default_plan = "tiny"

[plans.tiny]
name = "Tiny"
sessions_included = 2
concurrency = 2
requests_per_minute = 1000
projects = 2

[plans.ratelimited]
name = "Rate limited"
sessions_included = 100
concurrency = 5
requests_per_minute = 3
projects = 1

[plans.free]
name = "Free"
sessions_included = 100
concurrency = 1
requests_per_minute = 100
projects = 1

[plans.roomy]
name = "Roomy"
sessions_included = 1000
concurrency = 50
requests_per_minute = 100000
projects = 10

[plans.payg]
name = "Pay as you go"
sessions_included = 0
overage_cents = 10
requests_per_minute = 100000
"""


class TotpClock:
    """The clock test servers check TOTP codes against (``WebState.totp_clock``,
    set by ``start_server``): frozen in the middle of a 30 s step, which
    ``tests.web.conftest.totp_code`` moves on when it needs a fresh step
    instead of waiting for the wall clock to get there."""

    def __init__(self) -> None:
        self.step = int(time.time()) // 30

    def now(self) -> float:
        return self.step * 30 + 15.0


TOTP_CLOCK = TotpClock()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening after {timeout_s} s")


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    assert SPEECH.is_dir(), f"speech samples not found at {SPEECH}"
    return SPEECH


@pytest.fixture(scope="session")
def jfk_pcm(speech_dir) -> bytes:
    """jfk.flac as 24 kHz PCM16 mono (11.0 s)."""
    from voxgate.voice.audio import load_pcm16

    return load_pcm16(speech_dir / "jfk.flac", 24000)


@pytest.fixture(scope="session")
def voice_url(tmp_path_factory) -> str:
    """A local voice provider in its own process (faults enabled), shared by
    the session: ``ws://127.0.0.1:PORT/v1/realtime``."""
    port = free_port()
    log = tmp_path_factory.mktemp("voice") / "voice.log"
    env = {**os.environ, "VOXGATE_VOICE__FAULTS_ENABLED": "true"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voxgate", "voice", "serve", "--host", "127.0.0.1",
             "--port", str(port)],
            stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
        )
    try:
        wait_port(port, 60 * SLOW, proc)
        yield f"ws://127.0.0.1:{port}/v1/realtime"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Server:
    """A running voxgate app: ``url`` (http base), its store, gateway, and
    the account/project/key made for the test (``key`` the project key,
    ``admin_key`` the account's admin key)."""

    url: str
    app: web.Application
    runner: web.AppRunner
    key: str
    account_id: str
    project_id: str
    admin_key: str = ""

    @property
    def gateway(self):
        from voxgate.proxy.keys import GATEWAY

        return self.app[GATEWAY]

    @property
    def store(self):
        return self.gateway.store

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/realtime"

    async def admin_key_of(self, account_id: str) -> str:
        """A new admin key of the account (account-wide reads, billing)."""
        return (await self.store.create_admin_key(account_id, "test"))[1]

    async def new_account(self, plan: str = "tiny", email: str | None = None):
        """(account, project, key) for a fresh account on ``plan``."""
        account = await self.store.create_account(email or f"{plan}-{time.monotonic_ns()}@test", plan)
        project = await self.store.create_project(account.id, "p")
        _, key = await self.store.create_api_key(project.id, "k")
        return account, project, key

    async def session(self, session_id: str):
        """The stored record once the session is completed (waits up to 5 s)."""
        deadline = time.monotonic() + 5 * SLOW
        while True:
            record = await self.store.get_session(session_id)
            if record is not None and record.status == "completed":
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"session {session_id} not completed: {record}")
            import asyncio

            await asyncio.sleep(0.02)


@pytest.fixture
def catalog_path(tmp_path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(TEST_CATALOG)
    return path


def merge_settings(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` on top, one level of tables merged."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


async def start_server(settings_data: dict, plan: str, *, plugins: tuple[str, ...] | None = None,
                       cls: type[Server] = Server) -> Server:
    """Start voxgate on loopback (``settings_data["port"]`` or a free port)
    with a fresh account on ``plan``, its project and API key."""
    from voxgate.config import load_settings
    from voxgate.proxy.keys import GATEWAY
    from voxgate.server import create_app

    port = settings_data.get("port") or free_port()
    settings = load_settings(None, **{**settings_data, "port": port})
    app = create_app(settings, **({} if plugins is None else {"plugins": plugins}))
    from voxgate.web.state import WEB

    if WEB in app:
        app[WEB].totp_clock = TOTP_CLOCK.now
    runner = web.AppRunner(app, shutdown_timeout=2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    store = app[GATEWAY].store
    account = await store.create_account(f"{plan}-{time.monotonic_ns()}@test", plan)
    project = await store.create_project(account.id, "test")
    _, key = await store.create_api_key(project.id, "test")
    _, admin_key = await store.create_admin_key(account.id, "test")
    return cls(f"http://127.0.0.1:{port}", app, runner, key, account.id, project.id, admin_key)


@pytest_asyncio.fixture
async def make_server(tmp_path, voice_url, catalog_path):
    """Factory: ``await make_server(plan="tiny", upstream_url=None, **settings overrides)``."""
    servers: list[Server] = []

    async def factory(plan: str = "tiny", upstream_url: str | None = None, **overrides) -> Server:
        base = {
            "data_dir": str(tmp_path / f"data{len(servers)}"),
            "catalog": str(catalog_path),
            "upstream": {"provider": "local", "url": upstream_url or voice_url,
                         "connect_timeout_s": 5.0},
        }
        server = await start_server(merge_settings(base, overrides), plan)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.runner.cleanup()


@pytest_asyncio.fixture
async def server(make_server) -> Server:
    return await make_server()


@pytest_asyncio.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


# ---------------------------------------------------------------- stores on both databases

# make test's scripts/test-services.sh writes .test-pg-url when it had to run a
# private PostgreSQL (the system's asked for a password)
_PG_URL_FILE = ROOT / ".test-pg-url"
PG_URL = os.environ.get("VOXGATE_TEST_PG_URL") or (
    _PG_URL_FILE.read_text().strip() if _PG_URL_FILE.is_file()
    else "postgresql://postgres@127.0.0.1:5432/test")


async def open_store(kind: str, tmp_path: Path):
    """An open store: ``sqlite`` in ``tmp_path``, or ``postgresql`` in a fresh
    schema of ``PG_URL``'s database (``drop_store`` drops it). PostgreSQL
    unreachable fails the test (``make test`` starts it)."""
    import uuid

    from voxgate.store.sql import PostgresStore, SQLiteStore

    if kind == "sqlite":
        store = SQLiteStore(tmp_path / "data" / "voxgate.db")
    else:
        store = PostgresStore(PG_URL, schema=f"test_{uuid.uuid4().hex[:12]}")
    try:
        await store.open()
    except Exception as exc:
        if kind == "sqlite":
            raise
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL}: {exc} (make test starts it)")
    return store


def same_database(store):
    """A second store (a "process") on ``store``'s database, not yet open."""
    from voxgate.store.sql import PostgresStore, SQLiteStore

    if store.dialect.name == "postgresql":
        return PostgresStore(store.dialect.url, schema=store.dialect.schema)
    return SQLiteStore(store.dialect.path)


async def drop_store(store) -> None:
    """Close the store; a PostgreSQL store's schema is dropped."""
    schema = getattr(store.dialect, "schema", None)
    if schema:
        await store.db.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await store.close()


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def any_store(request, tmp_path):
    """The test once on SQLite and once on PostgreSQL (a schema of its own)."""
    store = await open_store(request.param, tmp_path)
    yield store
    await drop_store(store)
