"""`voxgate serve` as a real subprocess for the runtime tests (shutdown,
workers, Redis outage): started with settings in its environment, waited for
until it prints ``voxgate listening``, its records read back through the
store the settings name; plus a throw-away ``redis-server`` on a free port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, SLOW, free_port, wait_port


@dataclass
class Served:
    """One `voxgate serve` process: ``url`` its base URL, ``env`` its settings."""

    proc: subprocess.Popen
    url: str
    env: dict[str, str]
    log: Path
    lines: list[str] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/realtime"

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 30.0) -> int:
        return self.proc.wait(timeout_s * SLOW)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20 * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def settings_env(data_dir: Path, voice_url: str, catalog_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a voxgate process: no inherited VOXGATE_ setting,
    this tree's voxgate, the given data directory, catalog and voice
    provider, then ``settings`` (``drain_timeout_s="2"`` →
    ``VOXGATE_DRAIN_TIMEOUT_S=2``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env.update(PYTHONPATH=str(ROOT), VOXGATE_DATA_DIR=str(data_dir),
               VOXGATE_CATALOG=str(catalog_path), VOXGATE_UPSTREAM__URL=voice_url,
               VOXGATE_DEMO="false")
    env.update({f"VOXGATE_{k.upper()}": v for k, v in settings.items()})
    return env


def serve(env: dict[str, str], log: Path, *args: str, port: int | None = None) -> Served:
    """Start `voxgate serve --port PORT ARGS` and wait until it listens."""
    port = port or free_port()
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voxgate", "serve", "--port", str(port), *args],
            cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=fh, text=True)
    served = Served(proc, f"http://127.0.0.1:{port}", env, log)
    deadline = time.monotonic() + 60 * SLOW
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"voxgate serve exited {proc.wait()}: {served.stderr()[-3000:]}")
        served.lines.append(line)
        if line.startswith("voxgate listening"):
            return served
    served.stop()
    raise AssertionError(f"voxgate serve did not start: {served.lines}")


def load(env: dict[str, str]):
    """The settings ``env`` gives a voxgate process."""
    from voxgate.config import load_settings

    old = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return load_settings(None)
    finally:
        os.environ.clear()
        os.environ.update(old)


async def new_key(env: dict[str, str], plan: str) -> tuple[str, str, str]:
    """(account id, project id, API key) of a fresh account on ``plan``, made
    in the store ``env`` names (before or while voxgate runs)."""
    from voxgate.store import open_store

    store = open_store(load(env))
    await store.open()
    try:
        account = await store.create_account(f"{plan}-{time.monotonic_ns()}@test", plan)
        project = await store.create_project(account.id, "p")
        _, key = await store.create_api_key(project.id, "k")
        return account.id, project.id, key
    finally:
        await store.close()


async def records(env: dict[str, str], *session_ids: str):
    """The stored records of ``session_ids`` (None for a missing one)."""
    from voxgate.store import open_store

    store = open_store(load(env))
    await store.open()
    try:
        return [await store.get_session(sid) for sid in session_ids]
    finally:
        await store.close()


@dataclass
class RedisServer:
    """A redis-server of the test's own (never the machine's 6379 one)."""

    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 10 * SLOW, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis_server():
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()
