"""HTTP plumbing shared by every route: JSON bodies in and out, the error
middleware that renders ``VoxgateError`` as an OpenAI-style JSON body
(``{"error": {"type", "code", "message", "param"}}``) with its 4xx/5xx status,
never a traceback, and the response headers of the OpenAI API conventions.

Headers on responses (https://platform.openai.com/docs/api-reference/debugging-requests,
https://platform.openai.com/docs/guides/rate-limits):

- ``x-request-id: req_<32 hex>`` on every response that reaches the app; the
  same id is bound to the request's log context (``voxgate.logs``), so the
  access log line and every line logged while handling it carry it.
- ``x-should-retry: false`` on permanent refusals (``insufficient_quota``,
  ``invalid_api_key``, ``permission_denied``, validation errors, 404),
  ``true`` on transient ones (rate and concurrency limits, 5xx). The
  official SDKs follow it instead of guessing from the status.
- ``Retry-After`` (whole seconds) on every 429 and 503: the token bucket's
  wait for ``rate_limit_exceeded``, ``CONCURRENCY_RETRY_AFTER_S`` for
  ``concurrency_limit_exceeded``, the seconds until the next monthly period
  (UTC) for ``insufficient_quota``; rate limits also carry ``retry-after-ms``.
- ``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests``,
  ``x-ratelimit-reset-requests`` (a duration such as ``"6m0s"``, ``"1.2s"``,
  ``"600ms"``) on requests counted against the caller's per-minute request
  limit (``Gateway.check_rate``: the key's plan, ``requests_per_minute``).

Oversized requests: aiohttp's own parser limits are raised to
``PARSER_LIMIT_BYTES`` (``SERVER_LIMITS``, passed as the app's
``handler_args``) so that a header field over ``MAX_FIELD_BYTES`` (8 KiB),
or header fields over ``MAX_HEADER_BYTES`` together, reach the middleware
and get a JSON ``431 request_header_fields_too_large`` (and a request line
over ``MAX_FIELD_BYTES`` a ``414 uri_too_long``), logged as one line. Past
the parser limit aiohttp answers 400 itself; ``BadRequestLogFilter`` turns
its traceback into one warning line.
"""

from __future__ import annotations

import calendar
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from voxgate import logs
from voxgate.errors import (
    ConcurrencyLimited,
    HeaderFieldsTooLarge,
    InvalidRequest,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    UriTooLong,
    VoxgateError,
    dependency_error,
    error_body,
)

__all__ = ["read_json", "json_response", "with_body", "error_response", "error_middleware", "setup_http",
           "REQUEST_ID", "REQUEST_ID_HEADER", "SERVER_LIMITS", "MAX_FIELD_BYTES", "MAX_HEADER_BYTES",
           "CONCURRENCY_RETRY_AFTER_S", "format_reset", "should_retry", "retry_after_s",
           "BadRequestLogFilter"]

log = logging.getLogger("voxgate.http")
_PARSED = web.RequestKey("voxgate.parsed_json", object)
REQUEST_ID = web.RequestKey("voxgate.request_id", str)
REQUEST_ID_HEADER = "x-request-id"

MAX_FIELD_BYTES = 8 * 1024  # one header field (name + value), or the request line
MAX_HEADER_BYTES = 32 * 1024  # all header fields together
PARSER_LIMIT_BYTES = 64 * 1024
# aiohttp RequestHandler arguments (web.Application(handler_args=...)). The
# access log line ends with the request id.
SERVER_LIMITS: dict[str, Any] = {
    "max_field_size": PARSER_LIMIT_BYTES,
    "max_line_size": PARSER_LIMIT_BYTES,
    "access_log_format": '%a %t "%r" %s %b %Tf "%{User-Agent}i" request_id=%{X-Request-Id}o',
}
CONCURRENCY_RETRY_AFTER_S = 1  # a slot frees whenever one of the account's sessions ends
TRANSIENT_STATUSES = frozenset({408, 409, 429})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def with_body(request: web.Request, body: Any) -> web.Request:
    """Replace the request's parsed JSON body (for handlers that reshape it)."""
    request[_PARSED] = body
    return request


async def read_json(request: web.Request, *, allow_empty: bool = False) -> Any:
    """The request's JSON body (parsed once per request).

    Raises:
        InvalidRequest: not JSON, or empty when a body is required.
    """
    if _PARSED in request:
        return request[_PARSED]
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            request[_PARSED] = None
            return None
        raise InvalidRequest("request body must be JSON")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    request[_PARSED] = body
    return body


def json_response(body: Any, status: int = 200, **kw: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json", **kw)


def should_retry(err: VoxgateError) -> bool:
    """Whether the same request may succeed later: transient errors and 5xx."""
    return not err.permanent or err.status >= 500


def retry_after_s(err: VoxgateError, now: float | None = None) -> int | None:
    """Whole seconds for ``Retry-After`` (at least 1), or None when the error
    is neither a 429 nor a 503."""
    if isinstance(err, RateLimited | ServiceUnavailable):
        return max(1, round(err.retry_after_s))
    if isinstance(err, ConcurrencyLimited):
        return CONCURRENCY_RETRY_AFTER_S
    if isinstance(err, QuotaExceeded):
        return max(1, int(_next_period_start(time.time() if now is None else now) - (now or time.time())))
    if err.status in (429, 503):
        return 1
    return None


def _next_period_start(now: float) -> float:
    """Unix time of the first second of the next UTC month (quota periods)."""
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0)))


def error_response(err: VoxgateError) -> web.Response:
    """The JSON error response of ``err``: its status, body, ``x-should-retry``
    and, on 429/503, ``Retry-After``."""
    headers = {"x-should-retry": "true" if should_retry(err) else "false"}
    wait = retry_after_s(err)
    if wait is not None:
        headers["Retry-After"] = str(wait)
    if isinstance(err, RateLimited):  # the SDKs prefer it to Retry-After (finer)
        headers["retry-after-ms"] = str(max(1, round(err.retry_after_s * 1000)))
    return web.Response(body=error_body(err), status=err.status,
                        content_type="application/json", headers=headers)


def format_reset(seconds: float) -> str:
    """A reset duration as OpenAI writes it: ``"600ms"``, ``"1.5s"``, ``"6m0s"``."""
    if seconds < 1.0:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60.0:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{round(rest):d}s"


def _check_size(request: web.Request) -> None:
    """Raises HeaderFieldsTooLarge / UriTooLong (RFC 6585 section 5, RFC 9110 15.5.15)."""
    if len(request.raw_path) > MAX_FIELD_BYTES:
        raise UriTooLong(f"the request target exceeds {MAX_FIELD_BYTES} bytes")
    total = 0
    for name, value in request.raw_headers:
        size = len(name) + len(value) + 2
        if size > MAX_FIELD_BYTES:
            raise HeaderFieldsTooLarge(
                f"header field {name[:64].decode('latin-1')!r} exceeds {MAX_FIELD_BYTES} bytes",
                param=name[:64].decode("latin-1"))
        total += size
    if total > MAX_HEADER_BYTES:
        raise HeaderFieldsTooLarge(f"the header fields exceed {MAX_HEADER_BYTES} bytes together")


def _route_of(request: web.Request) -> str:
    """The route template (``/v1/sessions/{session_id}``), for metrics labels."""
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request its id, then render errors as JSON for API paths.
    HTML pages (the dashboard) keep aiohttp's own responses for redirects;
    a dependency that is down (``voxgate.errors.dependency_error``: Redis,
    the database, aiortc) becomes a 503 ``service_unavailable`` with
    ``Retry-After``; other unexpected exceptions become a 500 JSON body and
    are logged with their traceback. Counts every request in ``voxgate_http_requests_total``."""
    request_id = "req_" + uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    logs.bind(request_id=request_id)  # this request's task only; not reset, so the access log has it
    started = time.perf_counter()
    status = 500
    try:
        try:
            _check_size(request)
            response = await handler(request)
            status = response.status
            return response
        except VoxgateError as err:
            if err.status in (414, 431):
                log.warning("refused %s %s: %s", request.method, request.path[:200], err.message)
            response = error_response(err)
        except web.HTTPException as exc:
            status = exc.status
            if exc.status < 400 or not _wants_json(request):
                raise
            wrapped = VoxgateError(exc.reason or "error", code=_code_for(exc.status))
            wrapped.status = exc.status
            wrapped.type = "invalid_request_error"
            wrapped.permanent = exc.status not in TRANSIENT_STATUSES
            response = error_response(wrapped)
        except Exception as exc:
            unavailable = dependency_error(exc)
            if unavailable is not None:  # Redis, the database, aiortc: 503, not a traceback
                log.warning("%s %s: 503: %s: %s", request.method, request.path[:200],
                            type(exc).__name__, exc)
                response = error_response(unavailable)
            else:
                log.exception("unhandled error on %s %s", request.method, request.path)
                response = error_response(VoxgateError("internal server error",
                                                       code="internal_error"))
        status = response.status
        return response
    finally:
        _count(request, status, time.perf_counter() - started)


def _count(request: web.Request, status: int, elapsed_s: float) -> None:
    from voxgate.proxy.metrics import METRICS

    metrics = request.app.get(METRICS)
    if metrics is not None:
        metrics.http_request(request.method, _route_of(request), status, elapsed_s)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Headers of every response: request id, rate-limit state, retry hints."""
    from voxgate.proxy.gateway import RATE_LIMIT

    headers = response.headers
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    state = RATE_LIMIT.get()
    if state is not None:
        headers["x-ratelimit-limit-requests"] = str(state.limit)
        headers["x-ratelimit-remaining-requests"] = str(state.remaining)
        headers["x-ratelimit-reset-requests"] = format_reset(state.reset_s)
    status = response.status
    if status >= 400 and "x-should-retry" not in headers:
        headers["x-should-retry"] = "true" if status >= 500 or status in TRANSIENT_STATUSES else "false"
    if status in (429, 503) and "Retry-After" not in headers:
        headers["Retry-After"] = "1"


class BadRequestLogFilter(logging.Filter):
    """On ``aiohttp.server``: a request aiohttp's parser refused (malformed,
    oversized past ``SERVER_LIMITS``) is logged as one warning line without
    its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "bad HTTP request refused (%s): %s", (exc.code, exc.message)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_BAD_REQUEST_FILTER = BadRequestLogFilter()


def setup_http(app: web.Application) -> None:
    """Install the response headers, the log set-up (``Settings.log_format``,
    record context, key redaction). ``GET /openapi.json`` is
    ``voxgate.proxy.openapi.setup``'s, installed by the composition root."""
    from voxgate.proxy.keys import SETTINGS

    settings = app.get(SETTINGS)
    logs.configure(getattr(settings, "log_format", "text"))
    server_log = logging.getLogger("aiohttp.server")
    if _BAD_REQUEST_FILTER not in server_log.filters:
        server_log.addFilter(_BAD_REQUEST_FILTER)
    app.on_response_prepare.append(_on_prepare)


def _wants_json(request: web.Request) -> bool:
    path = request.path
    return path.startswith(("/v1/", "/billing/", "/admin/analytics", "/webhooks/")) or \
        "application/json" in request.headers.get("Accept", "")


def _code_for(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
        status, "http_error")
