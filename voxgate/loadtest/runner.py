"""Run a load test: N sessions at concurrency C, ramped, bounded in time,
then audit voxgate's verdicts and build the report.

:func:`run_loadtest` is the whole run; :class:`LoadtestConfig` its
parameters; :class:`Progress` the live counters a display can read while it
runs. The report is a JSON-ready dict (see ``docs/loadtest.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from voxgate.loadtest.audio import Clip
from voxgate.loadtest.audit import audit, fetch_records, find_calls, wait_completed
from voxgate.loadtest.plan import TWILIO_KINDS, WEBRTC_KINDS, SessionPlan, plan_sessions
from voxgate.loadtest.probe import ProcessProbe, pid_listening_on
from voxgate.loadtest.result import ADMITTED, FAILED, REFUSED, SessionResult
from voxgate.loadtest.ws_client import refusal_trace, run_ws_session

__all__ = ["LoadtestConfig", "Progress", "run_loadtest", "percentiles", "urls_of", "VANISH_WAIT_S"]

VANISH_WAIT_S = 15.0
"""How long a vanished session keeps its slot while voxgate notices the
client is gone (so the next session is not refused for concurrency), in s."""


@dataclass
class LoadtestConfig:
    """Parameters of a run.

    Attributes:
        url: voxgate's base URL (``http://127.0.0.1:8080``; ``ws://`` works too).
        transport: ``ws``, ``webrtc`` or ``twilio`` (phone calls over
            ``GET /v1/telephony/twilio``, the key in
            ``customParameters.authorization``).
        duration_s: audio per session, in s.
        duration_max_s: when set (and longer), each session's audio is
            drawn from ``duration_s``–``duration_max_s`` (seeded).
        mix: ``{kind: fraction}`` (:func:`voxgate.loadtest.plan.parse_mix`).
        ramp_s: session starts are spread over this many seconds.
        max_time_s: the run stops (cancelling what still runs) after this.
        direct: ``url`` is a Realtime WebSocket URL to use as is (the echo
            provider itself, for a baseline): no session ids, no audit.
        faults: ask the provider for ``voxgate_fault`` (it needs
            ``voice.faults_enabled``); off sends plain sessions.
        server_pid: the process to measure (default: the one listening on
            the URL's port; none when it cannot be found).
        twilio_auth_token: phone calls: sign each upgrade's
            ``X-Twilio-Signature`` with this token (when voxgate checks
            them).
    """

    url: str
    key: str
    sessions: int = 10
    concurrency: int = 1
    transport: str = "ws"
    duration_s: float = 8.0
    duration_max_s: float | None = None
    mix: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    audio: str | None = None
    ramp_s: float = 0.0
    max_time_s: float = 300.0
    model: str = "gpt-realtime"
    server_pid: int | None = None
    measure_server: bool = True
    direct: bool = False
    faults: bool = True
    audit_wait_s: float = 20.0
    min_audio_ms: float = 5000.0
    min_text_responses: int = 1
    max_connect_ms: float = 2000.0
    turn_url: str | None = None
    twilio_auth_token: str | None = None


@dataclass
class Progress:
    """Live counters of a run."""

    total: int
    started: int = 0
    running: int = 0
    admitted: int = 0
    refused: int = 0
    failed: int = 0
    events: int = 0
    t0: float = field(default_factory=time.perf_counter)

    @property
    def done(self) -> int:
        return self.admitted + self.refused + self.failed

    def add(self, r: SessionResult) -> None:
        self.running -= 1
        self.events += r.events_sent + r.events_received
        if r.outcome == ADMITTED:
            self.admitted += 1
        elif r.outcome == REFUSED:
            self.refused += 1
        else:
            self.failed += 1


def urls_of(url: str) -> tuple[str, str]:
    """``(http base, realtime WebSocket URL)`` of a voxgate URL."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme or "http")
    base = f"{scheme}://{parts.netloc}"
    ws_scheme = "wss" if scheme == "https" else "ws"
    return base, f"{ws_scheme}://{parts.netloc}/v1/realtime"


def percentiles(values: list[float], ps: tuple[float, ...] = (50, 95, 99)) -> dict[str, Any]:
    """``{"n", "p50", ...}`` by linear interpolation between closest ranks, in
    the values' unit (None when empty)."""
    out: dict[str, Any] = {"n": len(values)}
    data = sorted(values)
    for p in ps:
        if not data:
            out[f"p{p:g}"] = None
            continue
        k = (len(data) - 1) * p / 100.0
        lo = int(k)
        hi = min(lo + 1, len(data) - 1)
        out[f"p{p:g}"] = round(data[lo] + (data[hi] - data[lo]) * (k - lo), 3)
    if data:
        out["max"] = round(data[-1], 3)
    return out


async def run_loadtest(cfg: LoadtestConfig,
                       on_start: Callable[[Progress], None] | None = None) -> dict[str, Any]:
    """Run the load test and return the report (also when sessions fail).

    Raises:
        ValueError: bad configuration (unknown transport, no sessions).
    """
    if cfg.transport not in ("ws", "webrtc", "twilio"):
        raise ValueError(f"unknown transport {cfg.transport!r} (ws, webrtc or twilio)")
    if cfg.transport == "twilio":
        other = sorted(k for k, f in cfg.mix.items() if f and k not in TWILIO_KINDS)
        if other:
            raise ValueError(f"{', '.join(other)} sessions cannot be phone calls "
                             f"(twilio: {', '.join(TWILIO_KINDS[1:])})")
        if cfg.direct:
            raise ValueError("--direct needs --transport ws")
    if cfg.transport == "ws" and cfg.mix.get("turn_failure"):
        raise ValueError("turn_failure sessions need --transport webrtc")
    if cfg.transport == "webrtc":
        ws_only = sorted(k for k, f in cfg.mix.items() if f and k not in WEBRTC_KINDS)
        if ws_only:
            raise ValueError(f"{', '.join(ws_only)} sessions need --transport ws")
    if cfg.sessions < 1 or cfg.concurrency < 1:
        raise ValueError("sessions and concurrency must be at least 1")
    clip = Clip.load(cfg.audio)
    plans = plan_sessions(cfg.sessions, cfg.mix, round(cfg.duration_s * 1000), cfg.seed,
                          round(cfg.duration_max_s * 1000) if cfg.duration_max_s else None)
    base, realtime_url = urls_of(cfg.url)
    if cfg.direct:
        realtime_url = cfg.url
    progress = Progress(total=cfg.sessions)
    if on_start is not None:
        on_start(progress)

    probe = None
    if cfg.measure_server:
        pid = cfg.server_pid or pid_listening_on(urlsplit(realtime_url).port or 80)
        if pid is not None:
            with contextlib.suppress(Exception):
                probe = ProcessProbe(pid)
    results: dict[int, SessionResult] = {
        p.index: SessionResult(p.index, p.kind, _transport_name(cfg.transport),
                               error="not started before --max-time")
        for p in plans
    }
    sem = asyncio.Semaphore(cfg.concurrency)
    wall0 = time.time()
    t0 = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[refusal_trace()]) as http:
        one = _session_runner(cfg, http, base, realtime_url, clip)

        async def session(plan: SessionPlan) -> None:
            if cfg.ramp_s > 0 and cfg.sessions > 1:
                await asyncio.sleep(cfg.ramp_s * plan.index / cfg.sessions)
            async with sem:
                progress.started += 1
                progress.running += 1
                results[plan.index].error = "cut short by --max-time"
                r = await one(plan)
                results[plan.index] = r
                progress.add(r)
                if plan.kind == "vanish" and r.call_sid and not r.session_id:
                    found = await find_calls(http, base, cfg.key, {r.call_sid}, since=wall0 - 5)
                    r.session_id = found.get(r.call_sid)
                if plan.kind == "vanish" and r.session_id and not cfg.direct:
                    # The slot is free once voxgate has seen the client go.
                    await wait_completed(http, base, cfg.key, r.session_id, VANISH_WAIT_S)

        if probe is not None:
            probe.start()
        lag = LoopLag()
        lag_task = asyncio.create_task(lag.run())
        tasks = [asyncio.create_task(session(p)) for p in plans]
        _, pending = await asyncio.wait(tasks, timeout=cfg.max_time_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                # A bug in the client, not the server: keep it visible.
                raise task.exception()  # type: ignore[misc]
        wall_s = time.perf_counter() - t0
        lag_task.cancel()
        usage = await probe.stop() if probe is not None else None

        ordered = [results[p.index] for p in plans]
        audit_report: dict[str, Any] | None = None
        if not cfg.direct:
            calls = {r.call_sid for r in ordered if r.call_sid and not r.session_id}
            if calls:  # a phone call's session is found by its CallSid
                found = await find_calls(http, base, cfg.key, calls, since=wall0 - 5)
                for r in ordered:
                    if r.call_sid in found and not r.session_id:
                        r.session_id = found[r.call_sid]
            ids = {r.session_id for r in ordered if r.session_id}
            records = await fetch_records(http, base, cfg.key, ids, since=wall0 - 5,
                                          wait_s=cfg.audit_wait_s) if ids else {}
            audit_report = audit(ordered, records, cfg.min_audio_ms, cfg.min_text_responses,
                                 cfg.max_connect_ms)
    return build_report(cfg, ordered, wall0, wall_s, usage, audit_report, loop_lag=lag.report())


def _transport_name(transport: str) -> str:
    return {"ws": "websocket"}.get(transport, transport)


def _session_runner(cfg: LoadtestConfig, http: aiohttp.ClientSession, base: str,
                    realtime_url: str, clip: Clip):
    if cfg.transport == "twilio":
        from voxgate.loadtest.twilio_client import run_twilio_session
        from voxgate.proxy.telephony.twilio import TWILIO_PATH
        from voxgate.proxy.telephony.twilio_protocol import compute_signature

        twilio_url = realtime_url.removesuffix("/v1/realtime") + TWILIO_PATH
        token = cfg.twilio_auth_token

        async def one_call(plan: SessionPlan) -> SessionResult:
            return await run_twilio_session(
                http, twilio_url, cfg.key, plan, clip, model=cfg.model, faults=cfg.faults,
                signature=(lambda url: compute_signature(token, url)) if token else None)
        return one_call

    if cfg.transport == "webrtc":
        from voxgate.loadtest.webrtc_client import run_webrtc_session

        async def one(plan: SessionPlan) -> SessionResult:
            return await run_webrtc_session(http, base, cfg.key, plan, clip, model=cfg.model,
                                            faults=cfg.faults, turn_url=cfg.turn_url)
        return one

    async def one_ws(plan: SessionPlan) -> SessionResult:
        return await run_ws_session(http, realtime_url, cfg.key, plan, clip, model=cfg.model,
                                    faults=cfg.faults)
    return one_ws


class LoopLag:
    """The load generator's own event loop lag, sampled every
    :attr:`INTERVAL_S`: when its loop is late by more than
    :attr:`STALL_MS`, the gaps it counts in the returned audio may be its
    own, not the server's."""

    INTERVAL_S = 0.01
    STALL_MS = 60.0

    def __init__(self) -> None:
        self.stalls = 0
        self.max_ms = 0.0

    async def run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.INTERVAL_S)
            late_ms = (time.perf_counter() - t - self.INTERVAL_S) * 1000
            self.max_ms = max(self.max_ms, late_ms)
            if late_ms > self.STALL_MS:
                self.stalls += 1

    def report(self) -> dict[str, Any]:
        return {"stalls_over_60_ms": self.stalls, "max_lag_ms": round(self.max_ms, 1)}


def build_report(cfg: LoadtestConfig, results: list[SessionResult], wall0: float, wall_s: float,
                 usage, audit_report: dict[str, Any] | None, *,
                 loop_lag: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's report (JSON-ready)."""
    counts = {ADMITTED: 0, REFUSED: 0, FAILED: 0}
    by_kind: dict[str, dict[str, int]] = {}
    refusals: dict[str, int] = {}
    failures = []
    connect: list[float] = []
    connect_slow: list[float] = []
    rtt: list[float] = []
    events_sent = events_received = underruns = 0
    underrun_kinds: dict[str, int] = {}
    audio_s = 0.0
    for r in results:
        counts[r.outcome] += 1
        k = by_kind.setdefault(r.kind, {"sessions": 0, ADMITTED: 0, REFUSED: 0, FAILED: 0})
        k["sessions"] += 1
        k[r.outcome] += 1
        if r.outcome == REFUSED:
            why = (f"HTTP {r.http_status} {r.error_code or 'unknown'}" if r.http_status is not None
                   else f"close {r.close_code} {r.error_code or 'unknown'}")
            refusals[why] = refusals.get(why, 0) + 1
        elif r.outcome == FAILED:
            failures.append({"index": r.index, "kind": r.kind, "session_id": r.session_id,
                             "error": r.error})
        if r.connect_ms is not None:
            (connect_slow if r.kind == "slow_created" else connect).append(r.connect_ms)
        rtt.extend(r.rtt_ms)
        events_sent += r.events_sent
        events_received += r.events_received
        underruns += r.underruns
        for kind, n in r.underrun_kinds.items():
            underrun_kinds[kind] = underrun_kinds.get(kind, 0) + n
        audio_s += r.audio_in_ms / 1000.0
    server = None
    if usage is not None:
        server = usage.to_dict()
        server["cpu_ms_per_session_s"] = (round(usage.cpu_s * 1000 / audio_s, 3)
                                          if audio_s else None)
    return {
        "url": cfg.url,
        "transport": _transport_name(cfg.transport),
        "sessions": cfg.sessions,
        "concurrency": cfg.concurrency,
        "duration_s": cfg.duration_s,
        "duration_max_s": cfg.duration_max_s,
        "ramp_s": cfg.ramp_s,
        "max_time_s": cfg.max_time_s,
        "mix": cfg.mix,
        "seed": cfg.seed,
        "started_at": wall0,
        "wall_s": round(wall_s, 3),
        "admitted": counts[ADMITTED],
        "refused": counts[REFUSED],
        "failed": counts[FAILED],
        "by_kind": by_kind,
        "refusals": refusals,
        "failures": failures,
        "connect_ms": percentiles(connect),
        "connect_ms_slow_created": percentiles(connect_slow),
        "audio_rtt_ms": percentiles(rtt, (50, 99)),
        "events": {"sent": events_sent, "received": events_received,
                   "per_s": round((events_sent + events_received) / wall_s, 1) if wall_s else None},
        "audio_sent_s": round(audio_s, 3),
        "sender_underruns": underruns,
        **({"twilio": {"clears": sum(r.clears for r in results),
                       "marks_echoed": sum(r.marks_echoed for r in results)}}
           if cfg.transport == "twilio" else {}),
        "underruns_by_kind": underrun_kinds,
        "loadgen_loop": loop_lag,
        "server": server,
        "audit": audit_report,
        "session_results": [r.summary() for r in results],
    }
