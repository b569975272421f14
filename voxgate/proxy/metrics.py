"""Prometheus metrics (``GET /metrics``), one registry per application.

Sessions and admission:

- ``voxgate_sessions_started_total{transport}``
- ``voxgate_sessions_completed_total{transport, reason}``
- ``voxgate_admission_refusals_total{code}`` — quota, concurrency, rate limit
- ``voxgate_active_sessions``
- ``voxgate_session_audio_seconds_total{direction}`` — in / out
- ``voxgate_connect_latency_seconds`` — histogram
- ``voxgate_upstream_connect_failures_total{transport}`` — sessions the
  provider never opened (verdict ``not_connected``)
- ``voxgate_ice_outcomes_total{outcome, pair_type}`` — WebRTC sessions by
  ICE result: ``connected``, ``ice_failure``, ``turn_failure`` or
  ``not_connected`` (ICE never reached connected), with the selected
  candidate pair type (``host``, ``srflx``, ``prflx``, ``relay``, ``none``)

WebRTC media (read from the process's RTP pump, ``voxgate.proxy.webrtc.rtp_pump``,
at each scrape):

- ``voxgate_webrtc_rtp_streams`` — outgoing audio streams the pump sends
- ``voxgate_webrtc_late_frames_total`` — frames it sent more than 60 ms
  after their 20 ms tick (an event loop short of CPU: calls hear gaps)

Settlement (read from the store at each scrape):

- ``voxgate_outbox_depth`` — billable sessions waiting to be settled
- ``voxgate_outbox_oldest_age_seconds`` — age of the oldest (0 when empty)

HTTP (every request through ``voxgate.proxy.http.error_middleware``):

- ``voxgate_http_requests_total{method, route, status}`` — ``route`` is the
  route template (``/v1/sessions/{session_id}``) or ``unmatched``
- ``voxgate_http_request_duration_seconds{method, route}`` — histogram

Process (``prometheus_client.ProcessCollector``, Linux ``/proc``):
``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
``process_open_fds``, ``process_start_time_seconds``, …
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from voxgate.errors import VoxgateError
from voxgate.proxy.keys import GATEWAY

if TYPE_CHECKING:
    from voxgate.models import Verdict
    from voxgate.proxy.gateway import ActiveSession, Gateway
    from voxgate.store.base import MonthlyUsage

__all__ = ["Metrics", "metrics_handler", "METRICS", "OUTBOX_SCAN_LIMIT"]

log = logging.getLogger("voxgate.metrics")

OUTBOX_SCAN_LIMIT = 10_000  # outbox rows read per scrape; the depth saturates there


class RtpPumpCollector(Collector):
    """The RTP pump's figures at scrape time (0 before any WebRTC call: the
    pump's module, which imports aiortc, is not imported for a scrape)."""

    def collect(self) -> Iterator[Metric]:
        module = sys.modules.get("voxgate.proxy.webrtc.rtp_pump")
        pump = getattr(module, "RTP_PUMP", None)
        yield GaugeMetricFamily("voxgate_webrtc_rtp_streams",
                                "Outgoing WebRTC audio streams sent by the RTP pump",
                                value=pump.streams if pump is not None else 0)
        yield CounterMetricFamily("voxgate_webrtc_late_frames",
                                  "WebRTC audio frames sent more than 60 ms after their tick",
                                  value=pump.late_frames if pump is not None else 0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.started = Counter("voxgate_sessions_started", "Sessions admitted",
                               ["transport"], registry=r)
        self.completed = Counter("voxgate_sessions_completed", "Sessions completed, by verdict",
                                 ["transport", "reason"], registry=r)
        self.refusals = Counter("voxgate_admission_refusals", "Requests refused by admission",
                                ["code"], registry=r)
        self.active = Gauge("voxgate_active_sessions", "Sessions in flight", registry=r)
        self.audio = Counter("voxgate_session_audio_seconds", "Audio relayed, seconds",
                             ["direction"], registry=r)
        self.connect = Histogram(
            "voxgate_connect_latency_seconds", "Connect latency of connected sessions",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0), registry=r)
        self.upstream_failures = Counter(
            "voxgate_upstream_connect_failures", "Sessions the provider never opened",
            ["transport"], registry=r)
        self.ice_outcomes = Counter(
            "voxgate_ice_outcomes", "WebRTC sessions by ICE outcome and selected pair type",
            ["outcome", "pair_type"], registry=r)
        self.outbox_depth = Gauge("voxgate_outbox_depth", "Billable sessions waiting for settlement",
                                  registry=r)
        self.outbox_age = Gauge("voxgate_outbox_oldest_age_seconds",
                                "Age of the oldest session waiting for settlement", registry=r)
        self.http_requests = Counter("voxgate_http_requests", "HTTP requests by route and status",
                                     ["method", "route", "status"], registry=r)
        self.http_duration = Histogram(
            "voxgate_http_request_duration_seconds", "HTTP request handling time",
            ["method", "route"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0), registry=r)
        r.register(RtpPumpCollector())
        ProcessCollector(registry=r)

    def http_request(self, method: str, route: str, status: int, elapsed_s: float) -> None:
        """Count one HTTP request (``elapsed_s`` in seconds)."""
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(elapsed_s)

    def subscribe(self, gateway: Gateway) -> None:
        """Feed these metrics from ``gateway``'s hooks (``on_admitted``,
        ``on_refused``, ``on_completed``); the in-flight gauge reads
        ``len(gateway.active)`` at each scrape. Idempotent."""
        if self.session_completed in gateway.on_completed:
            return
        gateway.on_admitted.append(self.session_admitted)
        gateway.on_refused.append(self.session_refused)
        gateway.on_completed.append(self.session_completed)
        self.active.set_function(lambda: len(gateway.active))

    def session_admitted(self, transport: str) -> None:
        """``Gateway.on_admitted`` hook: sessions started, by transport."""
        self.started.labels(transport).inc()

    def session_refused(self, err: VoxgateError) -> None:
        """``Gateway.on_refused`` hook: refusals, by error code (or type)."""
        self.refusals.labels(err.code or err.type).inc()

    async def session_completed(self, active: ActiveSession, verdict: Verdict, usage: MonthlyUsage) -> None:
        """``Gateway.on_completed`` hook: sessions by verdict, audio seconds,
        connect latency, upstream failures and ICE outcomes."""
        record = active.record
        m = record.measurements
        self.completed.labels(record.transport, verdict.reason).inc()
        if m is not None:
            self.audio.labels("in").inc(m.audio_in_ms / 1000)
            self.audio.labels("out").inc(m.audio_out_ms / 1000)
            if m.connect_ms is not None:
                self.connect.observe(m.connect_ms / 1000)
        if verdict.reason == "not_connected":
            self.upstream_failures.labels(record.transport).inc()
        if record.transport == "webrtc" and m is not None:
            if m.turn_failure:
                outcome = "turn_failure"
            elif m.ice_failure:
                outcome = "ice_failure"
            elif m.ice_connected_ms is not None or m.ice_state in ("connected", "completed"):
                outcome = "connected"
            else:
                outcome = "not_connected"
            self.ice_outcomes.labels(outcome, m.ice_pair_type or "none").inc()

    async def refresh_outbox(self, gateway: Gateway, now: float | None = None) -> None:
        """Read the settlement outbox's depth and oldest age from the store."""
        now = time.time() if now is None else now
        items = await gateway.store.due_outbox(float("inf"), limit=OUTBOX_SCAN_LIMIT)
        self.outbox_depth.set(len(items))
        self.outbox_age.set(max(0.0, now - min(i.created_at for i in items)) if items else 0.0)


METRICS = web.AppKey("metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics``: the Prometheus text exposition format."""
    metrics = request.app[METRICS]
    gateway = request.app.get(GATEWAY)
    if gateway is not None:
        try:
            await metrics.refresh_outbox(gateway)
        except Exception:  # noqa: BLE001 - a store hiccup must not take the scrape down
            log.warning("outbox metrics not refreshed", exc_info=True)
    body = generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
