"""``voxgate serve --workers N``: N voxgate processes on one port.

The parent is a supervisor only (it opens no store and serves nothing): it
starts worker 0 and waits until it listens (so the data directory, the
migrations and a first start's demo account are made once), then the
others, each a ``voxgate serve`` of its own that binds the port with
``SO_REUSEPORT`` (the kernel spreads connections across them). Workers
share state through the database and Redis admission; call control reaches
the worker holding a call through ``voxgate.proxy.cluster``.

Signals: SIGTERM or SIGINT to the parent is forwarded (SIGTERM) to every
worker; each drains (``drain_timeout_s``) and exits; the parent exits 0 when
the workers it was running exited 0 (one still starting, stopped by the
SIGTERM before it listened, counts as clean). A second signal is forwarded
too: the workers then close their live sessions at once. A worker that dies on its own (a crash, kill -9) is restarted
after ``RESTART_DELAY_S``, with the same instance id when ``instance_id`` is
set (``<instance_id>-w<i>``), so its successor frees the dead run's leases
at once; one that fails before it ever listened stops the whole group
(exit 1): the cause is a setting, and restarting would not fix it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass

__all__ = ["parse_workers", "workers_refusal", "supervise", "RESTART_DELAY_S", "READY_LINE"]

RESTART_DELAY_S = 1.0
READY_LINE = "voxgate listening on "


def parse_workers(value: str) -> int:
    """``"auto"`` → the CPU count, else a whole number ≥ 1.

    Raises:
        ValueError: anything else.
    """
    if value == "auto":
        return os.cpu_count() or 1
    n = int(value)
    if n < 1:
        raise ValueError("--workers must be at least 1")
    return n


def workers_refusal(workers: int, admission_url: str, port: int) -> str | None:
    """The one line ``voxgate serve`` prints when it cannot run ``workers``
    processes with these settings, else None."""
    if workers <= 1:
        return None
    if not admission_url.startswith(("redis://", "rediss://", "unix://")):
        return (f"voxgate: --workers {workers} needs shared admission: set admission_url = "
                f"\"redis://host:6379/0\" (or VOXGATE_ADMISSION_URL); with in-process admission "
                f"each worker would admit against its own limits")
    if port == 0:
        return "voxgate: --workers needs a fixed --port (port 0 would give each worker its own)"
    return None


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    listened: bool = False  # ever (a worker that never listens stops the group)
    listening: bool = False  # its current process


async def supervise(workers: int, child_args: list[str], url: str, instance_id: str) -> int:
    """Run ``workers`` children (``python -m voxgate serve <child_args>
    --reuse-port``) until a signal, as the module docstring says. Returns the
    exit status: 0 after a clean stop, 1 when a worker could not start or
    did not stop cleanly."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    group = [_Worker(i) for i in range(workers)]
    failed = asyncio.Event()
    runners = []
    try:
        for worker in group:
            ready = asyncio.Event()
            runners.append(asyncio.create_task(
                _run(worker, child_args, instance_id, ready, stopping, failed)))
            await _first(ready, stopping, failed)
            if stopping.is_set() or failed.is_set():
                break
        else:
            print(f"{READY_LINE}{url} ({workers} workers)", flush=True)
        await _first(stopping, failed)
    finally:
        stopping.set()
        _signal_all(group, signal.SIGTERM)
        for sig in (signal.SIGTERM, signal.SIGINT):  # again: the workers close their sessions now
            loop.add_signal_handler(sig, _signal_all, group, signal.SIGTERM)
        statuses = await asyncio.gather(*runners)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 1 if failed.is_set() or any(statuses) else 0


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _signal_all(group: list[_Worker], sig: int) -> None:
    for worker in group:
        _signal(worker, sig)


def _signal(worker: _Worker, sig: int) -> None:
    proc = worker.proc
    if proc is not None and proc.returncode is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


async def _run(worker: _Worker, child_args: list[str], instance_id: str, ready: asyncio.Event,
               stopping: asyncio.Event, failed: asyncio.Event) -> int:
    """Keep one worker running until ``stopping``; returns its last status."""
    env = dict(os.environ)
    if instance_id:
        env["VOXGATE_INSTANCE_ID"] = f"{instance_id}-w{worker.index}"
    while True:
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voxgate", "serve", *child_args, "--reuse-port",
            # its own session: a terminal's Ctrl-C reaches the parent only, which
            # forwards one SIGTERM (a second signal cuts a worker's drain short)
            stdout=asyncio.subprocess.PIPE, env=env, start_new_session=True)
        worker.listening = False
        if stopping.is_set():
            _signal(worker, signal.SIGTERM)
        await _relay_output(worker, ready)
        status = await worker.proc.wait()
        if stopping.is_set():
            # stopped while it was still starting (no session yet): a clean stop too
            return 0 if status == -signal.SIGTERM and not worker.listening else status
        if not worker.listened:
            print(f"voxgate: worker {worker.index} exited with status {status} before it "
                  f"listened; stopping", file=sys.stderr, flush=True)
            failed.set()
            return status or 1
        print(f"voxgate: worker {worker.index} (pid {worker.proc.pid}) exited with status "
              f"{status}; restarting it in {RESTART_DELAY_S:g} s", file=sys.stderr, flush=True)
        try:
            await asyncio.wait_for(stopping.wait(), RESTART_DELAY_S)
            return 0  # stopped before its replacement started: nothing left to stop
        except TimeoutError:
            pass


async def _relay_output(worker: _Worker, ready: asyncio.Event) -> None:
    """Copy the worker's stdout to ours, except its "listening" line, which
    marks it ready (the parent prints one for the group)."""
    assert worker.proc is not None and worker.proc.stdout is not None
    async for raw in worker.proc.stdout:
        line = raw.decode(errors="replace")
        if line.startswith(READY_LINE):
            worker.listened = worker.listening = True
            ready.set()
            continue
        sys.stdout.write(line)
        sys.stdout.flush()
