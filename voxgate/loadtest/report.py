"""The live progress display and the end-of-run report, with rich."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from voxgate.loadtest.runner import Progress

__all__ = ["LiveDisplay", "render_report", "REFUSAL_HINTS"]

REFUSAL_HINTS = {
    "concurrency_limit_exceeded": "more sessions at once than the plan's concurrency",
    "insufficient_quota": "the plan's monthly sessions are used up",
    "rate_limit_exceeded": "more requests a minute than the plan allows",
    "invalid_api_key": "the key is unknown or revoked",
}
"""What a refusal's error code means for a load test, by code."""


class LiveDisplay:
    """A one-line live view of a run (started, running, outcomes, events/s),
    refreshed twice a second while the run goes on."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._live: Live | None = None
        self._task: asyncio.Task | None = None
        self._progress: Progress | None = None

    def start(self, progress: Progress) -> None:
        self._progress = progress
        if not self.enabled:
            return
        self._live = Live(self._render(), console=self.console, refresh_per_second=4,
                          transient=False)
        self._live.start()
        self._task = asyncio.create_task(self._run())

    def _render(self) -> Table:
        p = self._progress
        t = Table.grid(padding=(0, 2))
        if p is None:
            return t
        elapsed = time.perf_counter() - p.t0
        t.add_row(
            f"[bold]{p.done}/{p.total}[/] done", f"running {p.running}",
            f"[green]admitted {p.admitted}[/]", f"[yellow]refused {p.refused}[/]",
            f"[red]failed {p.failed}[/]", f"{elapsed:6.1f} s",
            f"{p.events / elapsed if elapsed > 0 else 0:,.0f} ev/s",
        )
        return t

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self._live is not None:
                self._live.update(self._render())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()


def _ms(p: dict[str, Any], key: str) -> str:
    v = p.get(key)
    return "-" if v is None else f"{v:.1f}"


def render_report(report: dict[str, Any], console: Console | None = None) -> None:
    """Print the report's summary tables."""
    console = console or Console()
    t = Table(title=f"voxgate loadtest: {report['sessions']} {report['transport']} sessions "
                    f"at concurrency {report['concurrency']} against {report['url']}")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("admitted / refused / failed",
              f"{report['admitted']} / {report['refused']} / {report['failed']}")
    t.add_row("wall time", f"{report['wall_s']:.1f} s")
    c = report["connect_ms"]
    t.add_row("connect p50 / p95 / p99 (ms)", f"{_ms(c, 'p50')} / {_ms(c, 'p95')} / {_ms(c, 'p99')}")
    a = report["audio_rtt_ms"]
    t.add_row("audio round trip p50 / p99 (ms)", f"{_ms(a, 'p50')} / {_ms(a, 'p99')}  (n={a['n']})")
    e = report["events"]
    t.add_row("events sent / received", f"{e['sent']} / {e['received']}  ({e['per_s'] or 0:,.0f}/s)")
    t.add_row("audio sent", f"{report['audio_sent_s']:.1f} s")
    tw = report.get("twilio")
    if tw:
        t.add_row("phone calls: clears / marks echoed", f"{tw['clears']} / {tw['marks_echoed']}")
    if report.get("sender_underruns"):
        t.add_row("sender underruns", str(report["sender_underruns"]))
    s = report.get("server")
    if s:
        where = " (in-process, includes load generator)" if s["in_process"] else ""
        t.add_row("voxgate CPU", f"{s['cpu_s']:.2f} s; {s['cpu_ms_per_session_s'] or 0:.2f} ms per "
                  f"session-second{where}")
        t.add_row("voxgate peak RSS", f"{s['rss_peak_mb']:.0f} MiB (pid {s['pid']})")
    else:
        t.add_row("voxgate CPU / RSS", "server process not found (use --server-pid)")
    au = report.get("audit")
    if au is not None:
        pct = 100.0 * au["matched"] / au["checked"] if au["checked"] else 100.0
        style = "green" if not au["mismatched"] else "red"
        t.add_row("metering audit", f"[{style}]{au['matched']}/{au['checked']} matched ({pct:.1f} %)[/]")
        ad = au.get("audio")
        if ad and ad["checked"]:
            style = "green" if not ad["mismatched"] else "red"
            t.add_row(f"audio within ±{ad['tolerance_ms']:.0f} ms",
                      f"[{style}]{ad['within_tolerance']}/{ad['checked']}[/] (max error in "
                      f"{ad['max_error_in_ms']:.1f} ms, out {ad['max_error_out_ms']:.1f} ms)")
    console.print(t)
    if report["by_kind"]:
        k = Table(title="sessions by kind")
        for col in ("kind", "sessions", "admitted", "refused", "failed", "verdicts matched"):
            k.add_column(col, justify="right" if col != "kind" else "left")
        audited = (au or {}).get("by_kind") or {}
        for kind, row in sorted(report["by_kind"].items()):
            a = audited.get(kind)
            k.add_row(kind, *(str(row[c]) for c in ("sessions", "admitted", "refused", "failed")),
                      f"{a['matched']}/{a['checked']}" if a else "-")
        console.print(k)
    for reason, n in report["refusals"].items():
        hint = REFUSAL_HINTS.get(reason.rsplit(" ", 1)[-1], "see the sessions' error")
        console.print(f"[yellow]refused {n}×: {reason}[/] — {hint}; plan limits: docs/loadtest.md")
    for f in report["failures"][:10]:
        console.print(f"[red]failed #{f['index']} ({f['kind']}): {f['error']}[/]")
    if len(report["failures"]) > 10:
        console.print(f"[red]… and {len(report['failures']) - 10} more failures[/]")
    if au:
        for m in au["mismatches"][:20]:
            if m.get("what") == "audio":
                console.print(f"[red]audio mismatch #{m['index']} {m['session_id']} ({m['kind']}): "
                              f"client in/out {m['client_audio_in_ms']}/{m['client_audio_out_ms']} ms, "
                              f"recorded {m['server_audio_in_ms']}/{m['server_audio_out_ms']} ms[/]")
                continue
            console.print(f"[red]audit mismatch #{m['index']} {m['session_id']} ({m['kind']}): "
                          f"expected {m['expected']}, recorded {m['recorded']} — {m['rule']}[/]")
