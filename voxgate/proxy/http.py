"""HTTP plumbing shared by every route: JSON bodies in and out, and the
error middleware that renders ``VoxgateError`` as an OpenAI-style JSON body
(``{"error": {"type", "code", "message", "param"}}``) with its 4xx/5xx status,
never a traceback."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from voxgate.errors import InvalidRequest, RateLimited, VoxgateError, error_body

__all__ = ["read_json", "json_response", "with_body", "error_response", "error_middleware"]

log = logging.getLogger("voxgate.http")
_PARSED = web.RequestKey("voxgate.parsed_json", object)


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


def error_response(err: VoxgateError) -> web.Response:
    headers = {}
    if isinstance(err, RateLimited):
        headers["Retry-After"] = str(max(1, round(err.retry_after_s)))
    return web.Response(body=error_body(err), status=err.status,
                        content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Render errors as JSON for API paths. HTML pages (the dashboard) keep
    aiohttp's own responses for redirects; unexpected exceptions become a
    500 JSON body and are logged with their traceback."""
    try:
        return await handler(request)
    except VoxgateError as err:
        return error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400 or not _wants_json(request):
            raise
        wrapped = VoxgateError(exc.reason or "error", code=_code_for(exc.status))
        wrapped.status = exc.status
        wrapped.type = "invalid_request_error"
        return error_response(wrapped)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(VoxgateError("internal server error", code="internal_error"))


def _wants_json(request: web.Request) -> bool:
    path = request.path
    return path.startswith(("/v1/", "/billing/", "/admin/analytics", "/webhooks/")) or \
        "application/json" in request.headers.get("Accept", "")


def _code_for(status: int) -> str:
    return {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(
        status, "http_error")
