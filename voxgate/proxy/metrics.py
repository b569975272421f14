"""Prometheus metrics (``GET /metrics``), one registry per application.

- ``voxgate_sessions_started_total{transport}``
- ``voxgate_sessions_completed_total{transport, reason}``
- ``voxgate_admission_refusals_total{code}`` — quota, concurrency, rate limit
- ``voxgate_active_sessions``
- ``voxgate_session_audio_seconds_total{direction}`` — in / out
- ``voxgate_connect_latency_seconds`` — histogram
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "metrics_handler"]


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


METRICS = web.AppKey("metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
