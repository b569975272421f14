"""voxgate's exception tree and its two renderings (an OpenAI-style ``error``
event on a WebSocket, a JSON body with a 4xx/5xx status on HTTP).

The tree::

    VoxgateError                      (type, code, param, status, permanent)
    ├── InvalidRequest                invalid_request_error, 400
    │   ├── MalformedEvent            invalid_json / invalid_event / invalid_base64 / ...
    │   └── MessageTooLarge           message_too_large
    ├── AuthenticationError           invalid_api_key, 401
    │   └── EphemeralKeyExpired       expired_ephemeral_key, 401
    ├── PermissionDenied              403 (key used for another project, ...)
    ├── NotFound                      404
    ├── RateLimited                   rate_limit_exceeded, 429 (transient)
    ├── QuotaExceeded                 insufficient_quota, 429
    ├── ConcurrencyLimited            concurrency_limit_exceeded, 429 (transient)
    ├── UpstreamError                 server_error, 502 (transient)
    ├── ServiceUnavailable            service_unavailable, 503 (transient): a
    │                                 dependency (Redis, the database, WebRTC
    │                                 media) is down, or the server is draining
    └── ConfigError                   not rendered to clients; raised at start-up

Error bodies follow the OpenAI API error object
(https://platform.openai.com/docs/guides/error-codes): ``{"error": {"type",
"code", "message", "param"}}``; the Realtime ``error`` event wraps the same
object with ``"type": "error"`` and an ``event_id``
(https://platform.openai.com/docs/api-reference/realtime-server-events/error).
"""

from __future__ import annotations

import sqlite3
import sys
import uuid
from typing import Any

import orjson

__all__ = [
    "VoxgateError",
    "InvalidRequest",
    "MalformedEvent",
    "MessageTooLarge",
    "AuthenticationError",
    "EphemeralKeyExpired",
    "PermissionDenied",
    "NotFound",
    "RateLimited",
    "QuotaExceeded",
    "ConcurrencyLimited",
    "UpstreamError",
    "ServiceUnavailable",
    "ConfigError",
    "dependency_error",
    "error_body",
    "error_event",
    "new_event_id",
]


class VoxgateError(Exception):
    """Base of every error voxgate reports to a client.

    Attributes:
        type: OpenAI error ``type`` (``invalid_request_error``, ``server_error``, ...).
        code: short machine-readable code, or None.
        param: the offending parameter or event field, or None.
        status: HTTP status used when rendered as a JSON body.
        permanent: False when retrying the same request later may succeed.
    """

    type = "server_error"
    code: str | None = None
    status = 500
    permanent = True

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.event_id = event_id  # the client event that caused it, if any

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error object: ``{"type", "code", "message", "param"}``
        (plus ``event_id`` when the error answers a client event)."""
        obj: dict[str, Any] = {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
        }
        if self.event_id is not None:
            obj["event_id"] = self.event_id
        return obj


class InvalidRequest(VoxgateError):
    type = "invalid_request_error"
    code = "invalid_request"
    status = 400


class MalformedEvent(InvalidRequest):
    """A client event that cannot be relayed as sent (bad JSON, unknown type,
    invalid base64 audio, ...). Answered with an ``error`` event; the session
    goes on."""

    code = "invalid_event"


class MessageTooLarge(InvalidRequest):
    code = "message_too_large"
    status = 413


class AuthenticationError(VoxgateError):
    type = "invalid_request_error"
    code = "invalid_api_key"
    status = 401


class EphemeralKeyExpired(AuthenticationError):
    code = "expired_ephemeral_key"


class PermissionDenied(VoxgateError):
    type = "invalid_request_error"
    code = "permission_denied"
    status = 403


class NotFound(VoxgateError):
    type = "invalid_request_error"
    code = "not_found"
    status = 404


class RateLimited(VoxgateError):
    """Requests per minute per API key exceeded. Transient.

    Attributes:
        retry_after_s: seconds until a request would be admitted.
    """

    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"
    status = 429
    permanent = False

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class QuotaExceeded(VoxgateError):
    """The account's monthly session quota (billable sessions plus those in
    flight) is used up. Permanent until the period rolls or the plan changes."""

    type = "insufficient_quota"
    code = "insufficient_quota"
    status = 429


class ConcurrencyLimited(VoxgateError):
    """The plan's simultaneous-session limit is reached. Transient."""

    type = "rate_limit_exceeded"
    code = "concurrency_limit_exceeded"
    status = 429
    permanent = False


class UpstreamError(VoxgateError):
    """The voice provider could not be reached or failed. Transient."""

    type = "server_error"
    code = "upstream_unavailable"
    status = 502
    permanent = False


class ServiceUnavailable(VoxgateError):
    """voxgate cannot serve the request now: Redis or the database is
    unreachable or overloaded, WebRTC media cannot be set up, or the server is
    shutting down. Transient; answered with ``Retry-After``.

    Attributes:
        retry_after_s: seconds the client should wait before retrying.
    """

    type = "server_error"
    code = "service_unavailable"
    status = 503
    permanent = False

    def __init__(self, message: str, *, retry_after_s: float = 1.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


# Exception classes of dependencies, by module, that mean "down or overloaded,
# try again later". Looked up only when their library is loaded.
_DEPENDENCY_ERRORS: dict[str, tuple[tuple[str, str], ...]] = {
    "redis": (("redis.exceptions", "ConnectionError"), ("redis.exceptions", "TimeoutError"),
              ("redis.exceptions", "BusyLoadingError"), ("redis.exceptions", "ReadOnlyError")),
    "sqlalchemy": (("sqlalchemy.exc", "OperationalError"), ("sqlalchemy.exc", "InterfaceError"),
                   ("sqlalchemy.exc", "TimeoutError"), ("sqlalchemy.exc", "DisconnectionError")),
    "asyncpg": (("asyncpg.exceptions", "PostgresConnectionError"),
                ("asyncpg.exceptions", "CannotConnectNowError"),
                ("asyncpg.exceptions", "InterfaceError")),
    "psycopg": (("psycopg", "OperationalError"), ("psycopg", "InterfaceError")),
    "aiortc": (("aiortc.exceptions", "InternalError"),),
}
_NAMES = {"redis": "Redis", "sqlalchemy": "the database", "asyncpg": "the database",
          "psycopg": "the database", "aiortc": "WebRTC media"}


def dependency_error(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 to answer for ``exc`` when it says a dependency is unreachable
    or overloaded (Redis connection, pool or timeout errors; a database
    connection, lock or pool error; an aiortc internal error; a refused
    connection), else None. The message names the dependency, never the
    address or credentials."""
    if isinstance(exc, ServiceUnavailable):
        return exc
    for package, classes in _DEPENDENCY_ERRORS.items():
        for module_name, class_name in classes:
            module = sys.modules.get(module_name)
            cls = getattr(module, class_name, None) if module is not None else None
            if isinstance(cls, type) and isinstance(exc, cls):
                return ServiceUnavailable(f"{_NAMES[package]} is unavailable; retry shortly")
    if isinstance(exc, sqlite3.OperationalError):  # locked, unreadable, disk I/O
        return ServiceUnavailable("the database is unavailable; retry shortly")
    if isinstance(exc, ConnectionRefusedError):
        return ServiceUnavailable("a backing service is unavailable; retry shortly")
    return None


class ConfigError(Exception):
    """Invalid configuration or catalog; raised at start-up, never sent to clients."""


def new_event_id() -> str:
    """A server event id in OpenAI's style (``event_…``)."""
    return "event_" + uuid.uuid4().hex[:20]


def error_body(err: VoxgateError) -> bytes:
    """JSON body for an HTTP error response: ``{"error": {...}}``."""
    return orjson.dumps({"error": err.to_dict()})


def error_event(err: VoxgateError) -> str:
    """A Realtime ``error`` server event, as JSON text, for a WebSocket or
    the ``oai-events`` data channel."""
    return orjson.dumps(
        {"type": "error", "event_id": new_event_id(), "error": err.to_dict()}
    ).decode()
