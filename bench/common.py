"""Shared pieces of the benchmarks: processes on loopback ports, a voxgate
server with a roomy plan, the load generator as a subprocess, machine info."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SPEECH = Path(os.environ.get("VOXGATE_SPEECH_DIR", ROOT / "tests" / "data"))
"""Speech files (jfk.flac, goforward-16k-s16le.raw, librivox-*.wav): the repo's own
tests/data unless ``VOXGATE_SPEECH_DIR`` names another directory."""

BENCH_CATALOG = """
minutes_per_session = 2.0
default_plan = "bench"

[plans.bench]
name = "Benchmark (unlimited)"
requests_per_minute = 100000000
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening after {timeout_s} s")


class Proc:
    """A subprocess on a loopback port, stopped on exit (by its own pid)."""

    def __init__(self, args: list[str], port: int, env: dict | None = None, log: Path | None = None,
                 cpus: set[int] | None = None):
        self.port = port
        self.log = log or Path(tempfile.mkstemp(prefix="voxgate-bench-", suffix=".log")[1])
        self._fh = open(self.log, "wb")
        self.proc = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=str(ROOT),
                                     preexec_fn=pinned(cpus))
        wait_port(port, self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        terminate(self.proc, 10.0)
        self._fh.close()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


async def new_key(config: Path, label: str) -> str:
    """A project API key of a fresh account on the bench plan, made in the
    store ``config`` (a voxgate.toml) names, before or while voxgate runs."""
    import uuid

    from voxgate.config import load_settings
    from voxgate.store import open_store

    store = open_store(load_settings(config))
    await store.open()
    try:
        account = await store.create_account(f"{label}-{uuid.uuid4().hex[:6]}@bench", "bench")
        project = await store.create_project(account.id, label)
        return (await store.create_api_key(project.id, label))[1]
    finally:
        await store.close()


def terminate(proc: subprocess.Popen, timeout_s: float = 40.0) -> None:
    """Stop ``proc`` (SIGTERM, its drain; SIGKILL after ``timeout_s``)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pinned(cpus: set[int] | None):
    """A ``preexec_fn`` that pins the child (and the threads it starts) to
    ``cpus`` (``os.sched_setaffinity``), or ``None`` for no pinning."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def split_cores() -> tuple[set[int], set[int]] | None:
    """(the bridge's core, everyone else's) on a machine of ≥ 2 usable cores:
    the first usable core alone, the rest together; ``None`` with one core."""
    cores = sorted(os.sched_getaffinity(0))
    return ({cores[0]}, set(cores[1:])) if len(cores) >= 2 else None


def echo_provider(cpus: set[int] | None = None) -> Proc:
    """The local voice provider in echo mode (faults enabled), own process."""
    port = free_port()
    return Proc([PY, "-m", "voxgate", "voice", "serve", "--host", "127.0.0.1", "--port", str(port)],
                port, env={"VOXGATE_VOICE__RESPONDER": "echo", "VOXGATE_VOICE__FAULTS_ENABLED": "true"},
                cpus=cpus)


class Voxgate(Proc):
    """``voxgate serve`` against ``upstream_url``, a fresh data dir, the bench
    catalog (one unlimited plan) and a project key in :attr:`key`; ``module``
    is what runs it (``voxgate``, or a wrapper taking the same arguments),
    ``cpus`` the cores it is pinned to."""

    def __init__(self, upstream_url: str, extra_toml: str = "", *, module: str = "voxgate",
                 env: dict | None = None, cpus: set[int] | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="voxgate-bench-"))
        (self.dir / "catalog.toml").write_text(BENCH_CATALOG)
        port = free_port()
        self.config = self.dir / "voxgate.toml"
        self.config.write_text(
            f'port = {port}\ndata_dir = "{self.dir}/data"\ncatalog = "{self.dir}/catalog.toml"\n'
            f'log_level = "WARNING"\n[upstream]\nprovider = "local"\nurl = "{upstream_url}"\n'
            + extra_toml)
        super().__init__([PY, "-m", module, "serve", "--config", str(self.config)], port,
                         env=env, log=self.dir / "serve.log", cpus=cpus)
        self.url = f"http://127.0.0.1:{port}"
        key_file = self.dir / "data" / "demo_api_key"
        deadline = time.monotonic() + 10.0
        while not key_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # serve binds first, then creates the demo account
        self.key = key_file.read_text().strip()


def loadtest(url: str, key: str, sessions: int, concurrency: int, duration_s: float, *,
             server_pid: int | None = None, direct: bool = False, faults: str = "",
             transport: str = "ws", ramp_s: float = 0.0, max_time_s: float = 120.0,
             cpus: set[int] | None = None) -> dict:
    """``voxgate loadtest`` in its own process (pinned to ``cpus`` if given);
    its JSON report."""
    out = Path(tempfile.mkstemp(prefix="voxgate-loadtest-", suffix=".json")[1])
    args = [PY, "-m", "voxgate", "loadtest", "--url", url, "--key", key,
            "--sessions", str(sessions), "--concurrency", str(concurrency),
            "--duration", str(duration_s), "--transport", transport, "--ramp", str(ramp_s),
            "--max-time", str(max_time_s), "--json", str(out), "--quiet"]
    if server_pid:
        args += ["--server-pid", str(server_pid)]
    if direct:
        args += ["--direct"]
    if faults:
        args += ["--faults", faults]
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(args, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=max_time_s + 120, preexec_fn=pinned(cpus))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        report = json.loads(out.read_text())
        report["loadgen_cpu_s"] = (after.ru_utime + after.ru_stime
                                   - before.ru_utime - before.ru_stime)
        return report
    finally:
        out.unlink(missing_ok=True)


def machine() -> str:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    return (f"{cpu}, {psutil.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")
