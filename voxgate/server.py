"""The composition root: builds the aiohttp application from the rooms
below it (proxy, web, billing, jobs), wires Metrics to the gateway's hooks,
and runs its lifecycle (start, drain, stop).

Routes served here:

- ``GET  /v1/realtime`` — WebSocket relay (``ws_relay``)
- ``POST /v1/realtime/client_secrets`` — ephemeral keys, GA (``tokens``)
- ``POST /v1/realtime/sessions`` — ephemeral keys, beta shape
- ``GET  /v1/sessions``, ``GET /v1/sessions/{id}``, ``GET /billing/usage`` (``api``)
- ``GET  /healthz`` (the process is alive), ``GET /readyz`` (it can take
  sessions: database and Redis answer, not draining), ``GET /metrics``
  (Prometheus)

Other rooms plug in through the ``setup(app)`` function of their module
(``PLUGINS``: ``voxgate.proxy.webrtc``, ``voxgate.proxy.telephony.sip``,
``voxgate.proxy.telephony`` (Twilio), ``voxgate.billing.service``,
``voxgate.jobs``, ``voxgate.web.app``, ``voxgate.web.voice_client``).

The application keys (``GATEWAY``, ``SETTINGS``, ``DEMO_KEY_FILE``, ...) live in
``voxgate.proxy.keys`` (a low floor every room may import) and are
re-exported here. Nothing imports this module but the command line and tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from voxgate import jobs
from voxgate.admission import open_admission
from voxgate.admission.redis import RedisAdmission
from voxgate.billing import service as billing_service
from voxgate.config import Settings
from voxgate.errors import ConfigError, ServiceUnavailable
from voxgate.models import PlanCatalog, load_catalog
from voxgate.proxy import api, cors, openapi, telephony, tokens, webrtc, ws_relay
from voxgate.proxy.cluster import Cluster
from voxgate.proxy.gateway import Gateway
from voxgate.proxy.http import SERVER_LIMITS, error_middleware, json_response, setup_http
from voxgate.proxy.keys import CLUSTER, CONNECTOR, DEMO_KEY_FILE, GATEWAY, PROVIDER, SETTINGS
from voxgate.proxy.metrics import METRICS, Metrics, metrics_handler
from voxgate.proxy.telephony import sip as telephony_sip
from voxgate.proxy.upstream import OPENAI_REALTIME_URL, UpstreamConnector
from voxgate.store import Store, open_store
from voxgate.web import app as web_app
from voxgate.web import voice_client

__all__ = ["create_app", "ensure_demo", "drain", "readiness",
           "GATEWAY", "CONNECTOR", "SETTINGS", "PROVIDER", "DEMO_KEY_FILE", "PLUGINS",
           "REFUSE_UNSHARED", "unshared_admission_refusal"]

log = logging.getLogger("voxgate")

READY_CHECK_TIMEOUT_S = 2.0  # each /readyz check (database, Redis) answers within this or fails
# Routes that start a session or mint a key for one: refused (503) while draining.
NEW_SESSION_ROUTES = frozenset({
    ("GET", "/v1/realtime"),
    ("POST", "/v1/realtime/calls"),
    ("POST", "/v1/realtime/client_secrets"),
    ("POST", "/v1/realtime/sessions"),
    ("GET", "/v1/telephony/twilio"),
    # a phone call arriving while draining: 503, so OpenAI delivers it again
    # (to another instance) instead of the caller being rejected
    ("POST", "/v1/telephony/openai/webhook"),
})
# Each room's ``setup(app)``, by module name, in the order they are installed.
PLUGINS: dict[str, Callable[[web.Application], None]] = {
    "voxgate.proxy.webrtc": webrtc.setup,
    # after webrtc: a SIP call's hang-up goes through the WebRTC call-control route
    "voxgate.proxy.telephony.sip": telephony_sip.setup,
    "voxgate.proxy.telephony": telephony.setup,  # Twilio Media Streams
    "voxgate.billing.service": billing_service.setup,
    "voxgate.jobs": jobs.setup,  # the scheduled jobs; after billing, whose notifier it uses
    "voxgate.web.app": web_app.setup,
    "voxgate.web.voice_client": voice_client.setup,
}


# Set by `voxgate serve`: refuse to start on PostgreSQL with in-process
# admission while another instance is live (unshared_admission_refusal).
REFUSE_UNSHARED: web.AppKey[bool] = web.AppKey("refuse_unshared_admission", bool)


async def unshared_admission_refusal(store: Store, settings: Settings, instance_id: str,
                                     now: float) -> str | None:
    """The one line ``voxgate serve`` stops with when it would share a
    PostgreSQL database with another live instance (heartbeat younger than
    ``heartbeat_ttl_s``, another ``instance_id``) while its admission is
    in-process: each instance would admit against its own limits and the
    cluster would overshoot them. None when the start is fine (SQLite,
    ``admission_url`` set, or no other live instance)."""
    if settings.admission_url or getattr(getattr(store, "dialect", None), "name", "sqlite") != "postgresql":
        return None
    live = [i for i in await store.list_instances()
            if i.id != instance_id and i.heartbeat_at >= now - settings.heartbeat_ttl_s]
    if not live:
        return None
    return (f"another voxgate instance ({live[0].id} on {live[0].host}) is live on this "
            f"PostgreSQL database and admission is in-process, so each would admit against "
            f"its own limits: set admission_url = \"redis://host:6379/0\" (or "
            f"VOXGATE_ADMISSION_URL) on every instance")


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    catalog: PlanCatalog | None = None,
    plugins: tuple[str, ...] = tuple(PLUGINS),
) -> web.Application:
    """Build the application with the rooms named in ``plugins`` (keys of
    ``PLUGINS``). Nothing is opened until the app starts.

    Raises:
        ConfigError: unreadable catalog, unsupported database URL, an
            unknown plugin name.
    """
    catalog = catalog or load_catalog(settings.catalog)
    store = store or open_store(settings)
    app = web.Application(middlewares=[error_middleware, drain_middleware],
                          client_max_size=8 * 1024 * 1024, handler_args=SERVER_LIMITS)
    gateway = Gateway(settings, store, open_admission(settings), catalog)
    app[SETTINGS] = settings
    app[GATEWAY] = gateway
    metrics = Metrics()
    metrics.subscribe(gateway)
    app[METRICS] = metrics
    app.router.add_get("/v1/realtime", ws_relay.realtime_websocket)
    app.router.add_post("/v1/realtime/client_secrets", tokens.client_secrets)
    app.router.add_post("/v1/realtime/sessions", tokens.beta_sessions)
    app.router.add_get("/v1/sessions", api.sessions_handler)
    app.router.add_get("/v1/sessions/{session_id}", api.session_handler)
    app.router.add_get("/billing/usage", api.usage_handler)
    app.router.add_get("/v1/projects/{project_id}", api.project_handler)
    app.router.add_patch("/v1/projects/{project_id}", api.update_project_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.cleanup_ctx.append(_lifecycle)
    cors.setup(app)
    setup_http(app)  # x-request-id, x-should-retry, x-ratelimit-*, logs
    openapi.setup(app)  # GET /openapi.json
    for name in plugins:
        if name not in PLUGINS:
            raise ConfigError(f"unknown plugin {name!r}: one of {', '.join(PLUGINS)}")
        PLUGINS[name](app)
    return app


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the process is alive (liveness), whatever its
    dependencies: ``{"status": "ok", "active_sessions": n}``."""
    gw = request.app[GATEWAY]
    return json_response({"status": "ok", "active_sessions": len(gw.active)})


async def readiness(gw: Gateway) -> dict[str, str]:
    """What stands between this process and new sessions: ``{"database":
    "ok" | problem, "redis": "ok" | "not configured" | problem,
    "shutdown": "draining" (only while draining)}``. Each check is bounded by
    ``READY_CHECK_TIMEOUT_S``; problems name the exception, never addresses
    or credentials."""
    checks: dict[str, str] = {}

    async def check(name: str, probe: Awaitable[object]) -> None:
        try:
            await asyncio.wait_for(probe, READY_CHECK_TIMEOUT_S)
            checks[name] = "ok"
        except TimeoutError:
            checks[name] = f"no answer within {READY_CHECK_TIMEOUT_S:g} s"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks[name] = f"unavailable ({type(exc).__name__})"

    await check("database", gw.store.get_meta("schema_version"))
    if isinstance(gw.admission, RedisAdmission):
        await check("redis", gw.admission.redis.ping())
    else:
        checks["redis"] = "not configured"
    if gw.draining:
        checks["shutdown"] = "draining"
    return checks


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: whether this process takes new sessions (readiness).
    200 ``{"status": "ready", "checks": {...}}``, or 503 ``{"status":
    "unavailable", "checks": {...}}`` with ``Retry-After`` when the database
    or Redis does not answer or the server is draining (``readiness``)."""
    checks = await readiness(request.app[GATEWAY])
    ready = all(v in ("ok", "not configured") for v in checks.values())
    if ready:
        return json_response({"status": "ready", "checks": checks})
    return json_response({"status": "unavailable", "checks": checks}, status=503,
                         headers={"Retry-After": "1"})


@web.middleware
async def drain_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[
        web.StreamResponse]]) -> web.StreamResponse:
    """While draining (after SIGTERM), routes that start a session
    (``NEW_SESSION_ROUTES``; a sideband attach to a live call still works)
    answer 503 ``service_unavailable`` with ``Retry-After``."""
    gw = request.app.get(GATEWAY)
    if gw is not None and gw.draining and (request.method, request.path) in NEW_SESSION_ROUTES \
            and "call_id" not in request.query:
        raise ServiceUnavailable("server shutting down; retry on another instance")
    return await handler(request)


async def drain(app: web.Application) -> None:
    """The first half of a graceful stop (SIGTERM): readiness fails and new
    sessions are refused at once, live sessions may run for
    ``Settings.drain_timeout_s``, then each gets an ``error`` event and close
    1001 "server shutting down" and is recorded (``Gateway.drain``). The
    caller then cleans the app up (``AppRunner.cleanup``)."""
    await app[GATEWAY].drain(app[SETTINGS].drain_timeout_s)


async def _lifecycle(app: web.Application):
    settings = app[SETTINGS]
    gw = app[GATEWAY]
    await gw.store.open()
    if app.get(REFUSE_UNSHARED):
        import time

        refusal = await unshared_admission_refusal(gw.store, settings, gw.instance_id,
                                                   time.time())
        if refusal is not None:
            await gw.store.close()
            raise ConfigError(refusal)
    provider = None
    upstream = settings.upstream
    url = upstream.url
    if upstream.provider == "local":
        key = "voxgate-local"
        if not url:
            from voxgate.voice.server import VoiceProvider

            provider = VoiceProvider(settings.voice)
            url = await provider.start(settings.voice.host, settings.voice.port)
            log.info("local voice provider at %s", url)
    else:
        if upstream.openai_api_key is None:
            raise ConfigError("upstream.provider = 'openai' needs OPENAI_API_KEY")
        key = upstream.openai_api_key.get_secret_value()
        url = url or OPENAI_REALTIME_URL
    connector = UpstreamConnector(
        provider=upstream.provider,
        url=url,
        api_key=key,
        connect_timeout_s=upstream.connect_timeout_s,
        max_message_bytes=max(16 * 1024 * 1024, settings.relay.max_message_bytes * 2),
        heartbeat_s=settings.relay.ping_interval_s or None,
    )
    await connector.start()
    app[CONNECTOR] = connector
    app[PROVIDER] = provider
    await gw.start()
    cluster = None
    if isinstance(gw.admission, RedisAdmission):  # several processes: route call control
        calls = app.get(webrtc.CALLS)
        cluster = Cluster(settings.admission_url, gw.instance_id,
                          lambda call_id: calls.get(call_id) if calls is not None else None,
                          prefix=gw.admission.prefix)
        await cluster.start()
        app[CLUSTER] = cluster
    if settings.demo_enabled:  # loopback only, unless `demo` says otherwise
        await ensure_demo(gw, settings)
    try:
        yield
    finally:
        await gw.stop()
        if cluster is not None:
            await cluster.close()
        await connector.close()
        if provider is not None:
            await provider.stop()
        await gw.admission.close()
        await gw.store.close()


async def ensure_demo(gw: Gateway, settings: Settings) -> str | None:
    """On first start with an empty store: a demo account (default plan),
    project and API key; the key goes to ``<data_dir>/demo_api_key`` (mode
    0600) and is printed once as ``demo API key: <key>``. Returns the new key
    or None when accounts already exist."""
    if await gw.store.list_accounts():
        return None
    account = await gw.store.create_account("demo@voxgate.local", gw.catalog.default_plan,
                                            name="Demo")
    project = await gw.store.create_project(account.id, "Demo project")
    _, key = await gw.store.create_api_key(project.id, "demo")
    path = Path(settings.data_dir) / DEMO_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    await gw.store.set_meta("demo_account_id", account.id)
    print(f"demo API key: {key}", flush=True)
    return key
