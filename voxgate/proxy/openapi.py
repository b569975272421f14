"""The OpenAPI 3.1 document of every HTTP route, served at ``GET /openapi.json``
(https://spec.openapis.org/oas/v3.1.0).

**Adding a route:** add one ``Op(...)`` (JSON API) or ``page(...)`` /
``form(...)`` (dashboard HTML) line to ``ROUTES`` below (method,
path as registered with aiohttp, summary, tag, who may call it, the request
and response schema names), and its response shape to ``SCHEMAS`` if it is
new. ``tests/test_openapi.py`` fails for any registered route that is not
here and validates real responses against these schemas. ``HEAD`` is implied
by ``GET`` (aiohttp registers both).

Schemas are JSON Schema 2020-12 (what OpenAPI 3.1 uses). They name the
fields clients rely on (``required``) and allow more (``additionalProperties``
is left open) so a new field is not a breaking change.

``voxgate openapi`` prints the document as JSON; ``voxgate openapi
--markdown`` prints the API reference (``voxgate.proxy.openapi_markdown``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["Op", "Param", "page", "form", "ROUTES", "SCHEMAS", "document", "setup", "openapi_handler", "OPENAPI_PATH"]

OPENAPI_PATH = "/openapi.json"

# security schemes: which credentials a route accepts
PROJECT_KEY = "projectKey"  # Authorization: Bearer vg_live_…
EPHEMERAL_KEY = "ephemeralKey"  # Authorization: Bearer ek_… (or the WebSocket subprotocol)
ADMIN_KEY = "adminKey"  # Authorization: Bearer vg_admin_…
DASHBOARD = "dashboardSession"  # the dashboard's session cookie
STRIPE = "stripeSignature"  # Stripe-Signature header
OPENAI_WEBHOOK = "openaiWebhookSignature"  # webhook-signature (Standard Webhooks), OpenAI's webhooks
TWILIO = "twilioStream"  # Twilio Media Streams: the key in the start message's customParameters

JSON = "application/json"
HTML = "text/html"


@dataclass(frozen=True)
class Param:
    """A query parameter (path parameters come from the path)."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Op:
    """One documented operation.

    Attributes:
        method, path: as registered (``/v1/sessions/{session_id}``).
        summary, tag: what it does, and its group.
        auth: the security schemes accepted (any one); ``()`` = public.
        request: schema name of the body, or None; ``request_type`` its media type.
        response: schema name of the success body, or None (empty or not
            JSON); ``response_type`` its media type, ``status`` its code.
        errors: the 4xx/5xx statuses it may return (``Error`` bodies for JSON routes).
        query: query parameters.
    """

    method: str
    path: str
    summary: str
    tag: str
    auth: tuple[str, ...] = (PROJECT_KEY, DASHBOARD)
    request: str | None = None
    request_type: str = JSON
    response: str | None = None
    response_type: str = JSON
    status: int = 200
    errors: tuple[int, ...] = (401, 403, 429)
    query: tuple[Param, ...] = ()


def _obj(required: tuple[str, ...] = (), **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": props}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
NSTR = {"type": ["string", "null"]}
NINT = {"type": ["integer", "null"]}
NNUM = {"type": ["number", "null"]}
ANY_OBJ = {"type": "object"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj(("error",), error=_obj(
        ("type", "code", "message", "param"),
        type=STR, code=NSTR, message=STR, param=NSTR, event_id=STR)),
    "ClientSecretRequest": _obj(
        expires_after=_obj(anchor={"const": "created_at"}, seconds={"type": "integer", "minimum": 10}),
        session=_obj(type={"enum": ["realtime", "transcription"]}, model=STR, instructions=STR)),
    "IceServer": _obj(("urls",), urls={"type": "array", "items": STR}, username=STR, credential=STR),
    "RealtimeSession": _obj(
        ("type", "object", "id", "model", "output_modalities", "instructions", "audio"),
        type={"enum": ["realtime", "transcription"]}, object={"const": "realtime.session"},
        id=STR, model=STR, output_modalities={"type": "array", "items": STR}, instructions=STR,
        tools={"type": "array"}, expires_at=INT, audio=_obj(("input", "output"), input=ANY_OBJ,
                                                           output=ANY_OBJ)),
    "ClientSecret": _obj(
        ("value", "expires_at", "session"),
        value={"type": "string", "pattern": "^ek_"}, expires_at=INT, session=_ref("RealtimeSession"),
        ice_servers={"type": "array", "items": _ref("IceServer")}),
    "BetaSession": {"allOf": [_ref("RealtimeSession"), _obj(
        ("client_secret",), client_secret=_obj(("value", "expires_at"), value=STR, expires_at=INT))]},
    "SessionRecord": _obj(
        ("id", "object", "account_id", "project_id", "transport", "model", "status", "started_at",
         "ended_at", "billable", "reason", "rule", "duration_ms", "connect_ms", "audio_in_ms",
         "audio_out_ms", "bytes_in", "bytes_out"),
        id={"type": "string", "pattern": "^sess_"}, object={"const": "realtime.session_record"},
        account_id=STR, project_id=STR,
        transport={"enum": ["websocket", "webrtc", "twilio", "sip"]}, model=STR,
        status={"enum": ["active", "completed"]}, started_at=NUM, ended_at=NNUM, billable=BOOL,
        reason=STR, rule=NSTR, duration_ms=INT, connect_ms=NNUM, audio_in_ms=INT, audio_out_ms=INT,
        bytes_in=INT, bytes_out=INT, events_in=INT, events_out=INT, event_counts=ANY_OBJ,
        provider_errors=INT, provider_error=NSTR, client_errors=INT, closed_by=NSTR, close_code=NINT,
        close_reason=NSTR, ice_pair_type=NSTR, ice_state=NSTR, turn_failure=BOOL, ice_failure=BOOL,
        settlement=NSTR,
        provider_cost_usd={"type": ["number", "null"], "description": "what the voice provider "
                           "charged the operator, USD to 1e-6; null when unpriced; present only "
                           "with [pricing] show_provider_cost"},
        provider_cost_reason={"type": ["string", "null"], "description": "why provider_cost_usd "
                              "is null"},
        call_sid={"type": ["string", "null"], "description": "a phone call's id: Twilio's CallSid "
                  "(transport twilio) or OpenAI's call_id (transport sip)"},
        stream_sid={"type": ["string", "null"], "description": "the Twilio Media Stream's StreamSid"},
        paid_by={"enum": ["operator", "customer"], "description": "who paid the provider: "
                 "customer = the project's own provider key (then the cost is always shown)"}),
    "SessionList": _obj(
        ("object", "data", "first_id", "last_id", "has_more"),
        object={"const": "list"}, data={"type": "array", "items": _ref("SessionRecord")},
        first_id=NSTR, last_id=NSTR, has_more=BOOL),
    "Call": {"allOf": [_ref("SessionRecord"), _obj(("call_id",), call_id=STR)]},
    "IceServers": _obj(("ice_servers",), ice_servers={"type": "array", "items": _ref("IceServer")}),
    "Usage": _obj(
        ("plan", "sessionsIncluded", "sessionsUsed", "sessionsRemaining", "estimatedMinutes",
         "minutesUsed", "percentUsed"),
        plan=STR, period=STR, sessionsIncluded=NINT, sessionsUsed=INT, sessionsRemaining=NINT,
        estimatedMinutes=NNUM, minutesUsed=NUM, percentUsed=NUM, sessionsTotal=INT, audioSeconds=NUM,
        planSessionsIncluded=NINT, packSessionsIncluded=INT, packSessionsUsed=INT,
        packSessionsRemaining=INT, packExpiresAt=NINT,
        packs={"type": "array", "items": _obj(
            ("id", "sessions", "sessionsRemaining", "expiresAt"), id=STR, pack=STR, source=STR,
            sessions=INT, sessionsRemaining=INT, purchasedAt=INT, expiresAt=INT)}),
    "Project": _obj(
        ("object", "id", "name", "created_at", "allowed_origins"),
        object={"const": "organization.project"}, id=STR, name=STR, created_at=INT,
        allowed_origins={"type": "array", "items": STR},
        openai_api_key_last4={"type": ["string", "null"], "description": "the last 4 characters "
                              "of the project's own OpenAI key (BYOK), null without one"},
        twilio_auth_token_last4={"type": ["string", "null"], "description": "the last 4 "
                                 "characters of the project's Twilio auth token, null without "
                                 "one"}),
    "ProjectUpdate": _obj(allowed_origins={"type": "array", "items": STR},
                          allowed_models={"type": "array", "items": STR},
                          allowed_ips={"type": "array", "items": STR},
                          openai_api_key={"type": ["string", "null"], "description": "the "
                                          "project's own OpenAI key (BYOK), stored encrypted and "
                                          "never shown again; null removes it"},
                          twilio_auth_token={"type": ["string", "null"], "description": "the "
                                             "auth token of the project's own Twilio account: "
                                             "its phone calls' X-Twilio-Signature is checked "
                                             "with it; stored encrypted, null removes it"}),
    "ReferRequest": _obj(("target_uri",), target_uri={"type": "string", "pattern": "^(tel|sip):",
                                                       "description": "where to transfer the SIP call"}),
    "Margin": {"type": "object", "required": ["object", "period", "total", "plans", "accounts"],
               "description": "revenue, provider cost and margin of one month per plan and "
                              "account (voxgate.models.margin); money in cents (int) and USD "
                              "(decimal strings)",
               "properties": {"object": {"const": "margin"}, "period": STR, "total": ANY_OBJ,
                              "plans": {"type": "array", "items": ANY_OBJ},
                              "accounts": {"type": "array", "items": ANY_OBJ}}},
    "Health": _obj(("status", "active_sessions"), status={"const": "ok"}, active_sessions=INT),
    "Readiness": _obj(("status", "checks"), status={"enum": ["ready", "unavailable"]},
                      checks={"type": "object", "additionalProperties": STR,
                              "description": "database, redis ('ok', 'not configured' or the "
                                             "problem), shutdown ('draining')"}),
    "Url": _obj(("url",), url=NSTR),
    "CheckoutRequest": {**_obj(plan=STR, pack=STR), "minProperties": 1},
    "AlertsWebhook": _obj(("url",), url=NSTR, secret=NSTR),
    "AlertsWebhookRequest": _obj(("url",), url=STR),
    "Webhook": _obj(("object", "url", "events"), object={"const": "webhook_endpoint"}, url=NSTR,
                    events={"type": "array", "items": STR},
                    secret={"type": "string", "pattern": "^whsec_",
                            "description": "answered by PUT only"}),
    "WebhookRequest": _obj(("url", "events"), url=STR, events={
        "type": "array", "minItems": 1,
        "items": {"enum": ["session.completed", "quota_warning", "quota_exhausted",
                           "spend_warning", "spend_limit_reached"]}}),
    "WebhookQueued": _obj(("queued",), queued=BOOL, id={"type": "string", "pattern": "^evt_"}),
    "WebhookDeliveryList": _obj(("object", "data"), object={"const": "list"}, data={
        "type": "array", "items": _obj(
            ("object", "id", "event_id", "type", "created", "status", "attempts", "payload"),
            object={"const": "webhook_delivery"}, id=INT, event_id=STR, type=STR, created=INT,
            status={"enum": ["pending", "delivered"]}, attempts=INT, last_error=NSTR,
            next_attempt_at=NNUM, delivered_at=NNUM, payload=ANY_OBJ)}),
    "Deleted": _obj(("deleted",), deleted=BOOL),
    "InvoiceList": _obj(("object", "data"), object={"const": "list"}, data={"type": "array"}),
    "WebhookReceipt": ANY_OBJ,
    "Analytics": _obj(
        ("period", "mrr", "active_users", "paid_users", "comped_users", "free_users"),
        period=STR, mrr=NUM, active_users=INT, paid_users=INT, comped_users=INT, free_users=INT,
        conversion_rate=NNUM, churn_rate=NNUM, paid_at_period_start=INT, churned=INT,
        operator_accounts=INT, sessions_by_plan=ANY_OBJ),
    "OpenAPI": _obj(("openapi", "info", "paths"), openapi=STR, info=ANY_OBJ, paths=ANY_OBJ),
    "Form": ANY_OBJ,
}

_WEB = (DASHBOARD,)
_SESSIONS_QUERY = (
    Param("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}),
    Param("after", STR, "cursor: the last id of the previous page"),
    Param("project_id", STR), Param("billable", {"enum": ["true", "false"]}),
    Param("reason", STR), Param("status", STR),
    Param("since", NUM, "Unix seconds"), Param("until", NUM, "Unix seconds"),
)


def page(path: str, summary: str, auth: tuple[str, ...] = _WEB, *, tag: str = "dashboard",
         response_type: str = HTML, status: int = 200) -> Op:
    """A ``GET`` of an HTML page (or file) of the dashboard."""
    return Op("GET", path, summary, tag, auth, response_type=response_type, status=status, errors=())


def form(path: str, summary: str, auth: tuple[str, ...] = _WEB, *, status: int = 303) -> Op:
    """A ``POST`` of a dashboard form, answered with a redirect (or a page)."""
    return Op("POST", path, summary, "dashboard", auth, request="Form",
              request_type="application/x-www-form-urlencoded", response_type=HTML, status=status,
              errors=(400, 403, 429))


# One line per route. Keep the order of the README's API table.
ROUTES: tuple[Op, ...] = (
    # realtime
    Op("GET", "/v1/realtime", "WebSocket relay (upgrade; X-Voxgate-Session-Id). ?model=, or "
       "?call_id= for sideband control of a WebRTC call", "realtime", (PROJECT_KEY, EPHEMERAL_KEY),
       status=101, response_type="", errors=(400, 401, 403, 404, 429, 502, 503),
       query=(Param("model", STR), Param("call_id", STR))),
    Op("POST", "/v1/realtime/client_secrets", "Mint an ephemeral key (GA shape)", "realtime",
       (PROJECT_KEY,), request="ClientSecretRequest", response="ClientSecret",
       errors=(400, 401, 403, 429, 503)),
    Op("POST", "/v1/realtime/sessions", "Mint an ephemeral key (beta shape)", "realtime",
       (PROJECT_KEY,), request="ClientSecretRequest", response="BetaSession",
       errors=(400, 401, 403, 429, 503)),
    Op("POST", "/v1/realtime/calls", "Start a WebRTC call: SDP offer in, SDP answer out (Location)",
       "realtime", (EPHEMERAL_KEY, PROJECT_KEY), request_type="application/sdp",
       response_type="application/sdp", status=201, errors=(400, 401, 403, 413, 429, 502, 503)),
    Op("GET", "/v1/realtime/calls/{call_id}", "The call's session record and verdict", "realtime",
       (PROJECT_KEY, EPHEMERAL_KEY), response="Call", errors=(401, 403, 404, 429)),
    Op("POST", "/v1/realtime/calls/{call_id}/hangup", "Hang up a call", "realtime",
       (PROJECT_KEY, EPHEMERAL_KEY), errors=(401, 403, 404, 429)),
    Op("DELETE", "/v1/realtime/calls/{call_id}", "Hang up a call", "realtime",
       (PROJECT_KEY, EPHEMERAL_KEY), errors=(401, 403, 404, 429)),
    Op("POST", "/v1/realtime/calls/{call_id}/refer", "Transfer a SIP call (target_uri tel: or sip:)",
       "realtime", (PROJECT_KEY,), request="ReferRequest", response="WebhookReceipt",
       errors=(400, 401, 403, 404, 429, 502)),
    Op("GET", "/v1/telephony/twilio", "Twilio Media Streams (WebSocket upgrade): a phone call "
       "bridged to the provider in audio/pcmu", "telephony", (TWILIO,), status=101,
       response_type="", errors=(403,)),
    Op("POST", "/v1/telephony/openai/webhook", "OpenAI's realtime.call.incoming webhook: admit "
       "and accept (or reject) a SIP call", "telephony", (OPENAI_WEBHOOK,),
       request="WebhookReceipt", response="WebhookReceipt", errors=(400, 413, 502, 503)),
    Op("GET", "/v1/realtime/ice_servers", "Short-lived TURN credentials", "realtime", (EPHEMERAL_KEY,),
       response="IceServers", errors=(401, 403, 429)),
    # projects and sessions
    Op("GET", "/v1/projects/{project_id}", "A project and its pins (allowed origins, ...)", "projects",
       (PROJECT_KEY, ADMIN_KEY, DASHBOARD), response="Project", errors=(401, 403, 404, 429)),
    Op("PATCH", "/v1/projects/{project_id}", "Change a project's pins", "projects",
       (PROJECT_KEY, ADMIN_KEY, DASHBOARD), request="ProjectUpdate", response="Project",
       errors=(400, 401, 403, 404, 429)),
    Op("GET", "/v1/sessions", "Sessions, newest first", "sessions", (PROJECT_KEY, ADMIN_KEY, DASHBOARD),
       response="SessionList", errors=(400, 401, 403, 404, 429), query=_SESSIONS_QUERY),
    Op("GET", "/v1/sessions/{session_id}", "One session record", "sessions",
       (PROJECT_KEY, ADMIN_KEY, DASHBOARD), response="SessionRecord", errors=(401, 403, 404, 429)),
    # billing
    Op("GET", "/billing/usage", "This period's usage", "billing", (PROJECT_KEY, ADMIN_KEY, DASHBOARD),
       response="Usage"),
    Op("POST", "/billing/checkout", "Stripe Checkout URL for a plan or an add-on pack", "billing",
       (PROJECT_KEY, ADMIN_KEY, DASHBOARD), request="CheckoutRequest", response="Url",
       errors=(400, 401, 403, 429, 502, 503)),
    Op("POST", "/billing/portal", "Stripe Customer Portal URL", "billing",
       (PROJECT_KEY, ADMIN_KEY, DASHBOARD), response="Url", errors=(400, 401, 403, 429, 502, 503)),
    Op("GET", "/billing/invoices", "The account's invoices", "billing", (PROJECT_KEY, ADMIN_KEY, DASHBOARD),
       response="InvoiceList", errors=(401, 403, 429, 502, 503)),
    Op("GET", "/billing/alerts-webhook", "The quota alerts webhook URL", "billing",
       (PROJECT_KEY, ADMIN_KEY, DASHBOARD), response="AlertsWebhook"),
    Op("PUT", "/billing/alerts-webhook", "Set the quota alerts webhook URL", "billing",
       (PROJECT_KEY, ADMIN_KEY, DASHBOARD), request="AlertsWebhookRequest", response="AlertsWebhook",
       errors=(400, 401, 403, 429)),
    Op("DELETE", "/billing/alerts-webhook", "Remove the quota alerts webhook", "billing",
       (PROJECT_KEY, ADMIN_KEY, DASHBOARD), response="Deleted"),
    Op("POST", "/webhooks/stripe", "Stripe webhook events", "billing", (STRIPE,), request="Form",
       response="WebhookReceipt", errors=(400, 503)),
    # operations
    Op("GET", "/healthz", "Liveness: the process answers", "operations", (), response="Health",
       errors=()),
    Op("GET", "/readyz", "Readiness: the database and Redis answer and the server is not draining "
       "(else 503 with the same body, naming what is wrong)", "operations", (),
       response="Readiness", errors=()),
    Op("GET", "/metrics", "Prometheus metrics", "operations", (), response_type="text/plain", errors=()),
    Op("GET", OPENAPI_PATH, "This document", "operations", (), response="OpenAPI", errors=()),
    Op("GET", "/admin/analytics", "Operator figures", "operations", _WEB, response="Analytics",
       errors=(401, 403)),
    Op("GET", "/admin/margin", "Revenue, provider cost and margin of a month per plan and "
       "account (a browser gets the page)", "operations", _WEB, response="Margin",
       errors=(400, 401, 403), query=(Param("period", STR, "YYYY-MM, default this month"),
                                      Param("format", {"enum": ["json"]}, "json: JSON even for a browser"))),
    # dashboard pages (HTML) and forms (redirects)
    page("/", "Redirect to the dashboard or the sign-in page", (), status=303),
    page("/signup", "Sign-up page", ()),
    form("/signup", "Create an account", ()),
    page("/signin", "Sign-in page", ()),
    form("/signin", "Sign in", ()),
    page("/signin/2fa", "Second sign-in step: the one-time code", ()),
    form("/signin/2fa", "Check the one-time code", ()),
    form("/signout", "Sign out"),
    page("/account/2fa", "Two-factor authentication settings"),
    form("/account/2fa", "Turn two-factor authentication on or off"),
    page("/account/webhook", "Webhook endpoint and its deliveries"),
    form("/account/webhook", "Set the webhook endpoint (signing secret shown once)", status=200),
    form("/account/webhook/delete", "Remove the webhook endpoint"),
    form("/account/webhook/test", "Send a test event to the webhook endpoint"),
    form("/account/webhook/deliveries/{delivery_id}/resend", "Resend a webhook delivery"),
    page("/dashboard", "Usage dashboard"),
    page("/sessions", "Sessions page"),
    page("/sessions.csv", "Sessions as CSV", response_type="text/csv"),
    page("/sessions/{session_id}", "A session's receipt"),
    page("/usage.csv", "Usage as CSV", response_type="text/csv"),
    page("/projects", "Projects and keys"),
    form("/projects", "Create a project"),
    form("/projects/{project_id}/delete", "Delete a project"),
    form("/projects/{project_id}/keys", "Create a key (shown once)", status=200),
    form("/projects/{project_id}/origins", "Set allowed origins"),
    form("/projects/{project_id}/provider-key", "Set or remove the project's own OpenAI key"),
    form("/projects/{project_id}/keys/{key_id}/revoke", "Revoke a key"),
    form("/admin-keys", "Create an account admin key (shown once)", status=200),
    form("/admin-keys/{key_id}/revoke", "Revoke an admin key"),
    page("/billing", "Billing page"),
    form("/billing", "Billing actions (upgrade, portal)"),
    page("/pricing", "Pricing page", ()),
    page("/simulator", "Plan simulator", ()),
    page("/admin", "Operator page"),
    page("/admin/audit", "Operator audit log"),
    form("/admin/packs", "Grant an add-on pack to an account"),
    form("/admin/enterprise", "Set an account's enterprise plan"),
    form("/admin/spend-limit", "Set an account's own provider spend limit"),
    page("/static/{filename}", "Dashboard assets", (), response_type="*/*"),
    # browser voice client
    page("/voice", "Browser voice client (WebRTC)", (), tag="voice"),
    page("/voice/static/{filename}", "Voice client assets", (), tag="voice", response_type="*/*"),
    Op("POST", "/voice/demo-key", "Ephemeral key of the demo project", "voice", (), response="ClientSecret",
       errors=(404, 429)),
    # customer webhook endpoint (docs/webhooks.md)
    Op("GET", "/v1/webhook", "The account's webhook endpoint and its events", "webhooks",
       (ADMIN_KEY, DASHBOARD), response="Webhook"),
    Op("PUT", "/v1/webhook", "Set the webhook endpoint (the signing secret is answered once)",
       "webhooks", (ADMIN_KEY, DASHBOARD), request="WebhookRequest", response="Webhook",
       errors=(400, 401, 403, 429)),
    Op("DELETE", "/v1/webhook", "Remove the webhook endpoint", "webhooks", (ADMIN_KEY, DASHBOARD),
       response="Deleted"),
    Op("POST", "/v1/webhook/test", "Send a webhook.test event to the endpoint", "webhooks",
       (ADMIN_KEY, DASHBOARD), response="WebhookQueued", errors=(401, 403, 404, 429)),
    Op("GET", "/v1/webhook/deliveries", "The account's webhook deliveries, newest first",
       "webhooks", (ADMIN_KEY, DASHBOARD), response="WebhookDeliveryList",
       errors=(400, 401, 403, 429),
       query=(Param("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}),)),
    Op("POST", "/v1/webhook/deliveries/{delivery_id}/resend", "Send a delivery again",
       "webhooks", (ADMIN_KEY, DASHBOARD), response="WebhookQueued",
       errors=(401, 403, 404, 429)),
)

_SECURITY_SCHEMES = {
    PROJECT_KEY: {"type": "http", "scheme": "bearer", "description": "project API key vg_live_…"},
    EPHEMERAL_KEY: {"type": "http", "scheme": "bearer",
                    "description": "ephemeral key ek_… (WebSocket: subprotocol openai-insecure-api-key.ek_…)"},
    ADMIN_KEY: {"type": "http", "scheme": "bearer", "description": "account admin key vg_admin_…"},
    DASHBOARD: {"type": "apiKey", "in": "cookie", "name": "voxgate_session",
                "description": "signed-in dashboard user"},
    STRIPE: {"type": "apiKey", "in": "header", "name": "Stripe-Signature"},
    OPENAI_WEBHOOK: {"type": "apiKey", "in": "header", "name": "webhook-signature",
                     "description": "OpenAI's Standard Webhooks signature (with webhook-id and "
                                    "webhook-timestamp), checked with [sip] openai_webhook_secret"},
    TWILIO: {"type": "apiKey", "in": "header", "name": "X-Twilio-Signature",
             "description": "Twilio's request signature when [telephony] twilio_auth_token is set; "
                            "the caller's key is customParameters.authorization of the start "
                            "message (Bearer vg_live_… or ek_…)"},
}

_HEADERS = {
    "x-request-id": {"description": "id of this request (also in voxgate's log lines)", "schema": STR},
    "x-should-retry": {"description": "whether retrying the same request may succeed",
                       "schema": {"enum": ["true", "false"]}},
    "Retry-After": {"description": "seconds to wait (429, 503)", "schema": INT},
    "x-ratelimit-limit-requests": {"description": "requests per minute of the plan", "schema": INT},
    "x-ratelimit-remaining-requests": {"description": "requests left", "schema": INT},
    "x-ratelimit-reset-requests": {"description": "time until the budget is full, e.g. 6m0s", "schema": STR},
}

_REASONS = {101: "Switching Protocols", 200: "OK", 201: "Created", 303: "See Other", 400: "Bad request",
            401: "Missing or invalid key", 403: "Permission denied", 404: "Not found",
            413: "Too large", 414: "URI too long", 429: "Quota, concurrency or rate limit",
            431: "Header fields too large", 500: "Internal error", 502: "Provider unavailable",
            503: "Unavailable: Redis or the database down, shutting down, or not configured "
                 "(billing without Stripe, ...)"}


def _header_refs(names: tuple[str, ...]) -> dict[str, Any]:
    return {n: {"$ref": f"#/components/headers/{n}"} for n in names}


def _operation(op: Op) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": STR}
        for name in re.findall(r"{(\w+)}", op.path)
    ]
    params += [{"name": p.name, "in": "query", "required": p.required, "schema": p.schema,
                **({"description": p.description} if p.description else {})} for p in op.query]
    ok: dict[str, Any] = {"description": _REASONS.get(op.status, "OK")}
    if op.response_type:
        ok["content"] = {op.response_type: {"schema": _ref(op.response) if op.response else {}}}
    rate = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
    ok["headers"] = _header_refs(("x-request-id",) + (rate if set(op.auth) & {PROJECT_KEY, EPHEMERAL_KEY}
                                                       else ()))
    responses: dict[str, Any] = {str(op.status): ok}
    for status in sorted(set(op.errors) | {500}):
        err: dict[str, Any] = {"description": _REASONS.get(status, "Error"),
                               "headers": _header_refs(("x-request-id", "x-should-retry")
                                                       + (("Retry-After",) if status in (429, 503) else ()))}
        if op.response_type != HTML:
            err["content"] = {JSON: {"schema": _ref("Error")}}
        responses[str(status)] = err
    out: dict[str, Any] = {
        "operationId": f"{op.method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', op.path).strip('_') or 'root'}",
        "summary": op.summary, "tags": [op.tag], "responses": responses,
        "security": [{name: []} for name in op.auth],
    }
    if params:
        out["parameters"] = params
    if op.request:
        out["requestBody"] = {"required": op.request_type != JSON,
                              "content": {op.request_type: {"schema": _ref(op.request)}}}
    elif op.request_type != JSON:
        out["requestBody"] = {"required": True, "content": {op.request_type: {"schema": STR}}}
    return out


def document(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh dict)."""
    paths: dict[str, dict[str, Any]] = {}
    for op in ROUTES:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "voxgate", "version": "0.1.0",
                 "description": "Real-time voice-session proxy (OpenAI Realtime API compatible) "
                                "with metering. Errors are {\"error\": {type, code, message, param}}."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": _SECURITY_SCHEMES, "headers": _HEADERS},
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc


async def openapi_handler(request: web.Request) -> web.Response:
    """``GET /openapi.json`` → the document."""
    from voxgate.proxy.http import json_response

    return json_response(document(), headers={"Cache-Control": "no-cache"})


def setup(app: web.Application) -> None:
    """Register ``GET /openapi.json``."""
    app.router.add_get(OPENAPI_PATH, openapi_handler)
