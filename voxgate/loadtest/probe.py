"""The server's own cost during a run: CPU seconds and peak RSS of one
process, read with psutil (``--server-pid``, or the process listening on the
URL's port)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

import psutil

__all__ = ["ProcessProbe", "ProcessUsage", "pid_listening_on"]


def pid_listening_on(port: int, host: str = "127.0.0.1") -> int | None:
    """The pid of the process with a TCP socket listening on ``port``
    (None if none is visible: other users' processes need root)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError):
        conns = []
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            if c.laddr.ip in (host, "0.0.0.0", "::", "::1", "127.0.0.1"):
                return c.pid
    # Fall back to our own children and ourselves (visible without root).
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            for pc in proc.net_connections(kind="tcp"):
                if pc.status == psutil.CONN_LISTEN and pc.laddr and pc.laddr.port == port:
                    return proc.pid
    return None


@dataclass(slots=True)
class ProcessUsage:
    """CPU and memory of a process over a run.

    Attributes:
        cpu_s: user + system CPU seconds spent during the run.
        rss_peak_mb: the highest RSS sampled during the run, in MiB.
        hwm_mb: the kernel's lifetime RSS high-water mark (VmHWM), in MiB.
        in_process: the server runs in the load generator's own process (its
            CPU then includes the load generator's).
    """

    pid: int
    cpu_s: float
    rss_peak_mb: float
    hwm_mb: float | None
    in_process: bool

    def to_dict(self) -> dict:
        return {"pid": self.pid, "cpu_s": round(self.cpu_s, 3),
                "rss_peak_mb": round(self.rss_peak_mb, 1),
                "vm_hwm_mb": None if self.hwm_mb is None else round(self.hwm_mb, 1),
                "in_process": self.in_process}


class ProcessProbe:
    """Samples a process: ``start()``, then ``await stop()`` for its usage.

    Raises (``__init__``):
        psutil.NoSuchProcess: no process ``pid``.
    """

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid = pid
        self.proc = psutil.Process(pid)
        self.interval_s = interval_s
        self._cpu0 = 0.0
        self._rss_peak = 0
        self._task: asyncio.Task | None = None

    def _cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def _sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self._rss_peak = max(self._rss_peak, self.proc.memory_info().rss)

    def start(self) -> None:
        self._cpu0 = self._cpu()
        self._sample()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self._sample()

    async def stop(self) -> ProcessUsage:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._sample()
        cpu = self._cpu() - self._cpu0
        return ProcessUsage(self.pid, cpu, self._rss_peak / 2**20, _vm_hwm_mb(self.pid),
                            self.pid == os.getpid())


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
