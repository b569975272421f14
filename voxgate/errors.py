"""voxgate's exception tree and its two renderings (an OpenAI-style ``error``
event on a WebSocket, a JSON body with a 4xx/5xx status on HTTP).

The tree (every voxgate exception; each class lives here and is re-exported
by the module that raises it)::

    VoxgateError                      (type, code, param, status, permanent)
    ├── InvalidRequest                invalid_request_error, 400
    │   ├── MalformedEvent            invalid_json / invalid_event / invalid_base64 / ...
    │   ├── MessageTooLarge           message_too_large
    │   ├── HeaderFieldsTooLarge      request_header_fields_too_large, 431 (proxy.http)
    │   ├── UriTooLong                uri_too_long, 414 (proxy.http)
    │   ├── InvalidSdp                invalid_sdp: an SDP offer that cannot be answered
    │   ├── UpstreamRefused           upstream_refused: the provider refused the
    │   │                             client's request at the handshake (HTTP 4xx)
    │   └── UnsafeUrl                 unsafe_url: a webhook URL voxgate will not send to
    ├── AuthenticationError           invalid_api_key, 401
    │   └── EphemeralKeyExpired       expired_ephemeral_key, 401
    ├── PermissionDenied              403 (key used for another project, ...)
    ├── NotFound                      404
    ├── RateLimited                   rate_limit_exceeded, 429 (transient)
    ├── QuotaExceeded                 insufficient_quota, 429
    ├── ConcurrencyLimited            concurrency_limit_exceeded, 429 (transient)
    ├── UpstreamError                 server_error, 502 (transient)
    │   └── ProviderKeyRefused        provider_key_refused: the provider answered 401
    │                                 to the project's own key (BYOK)
    ├── ServiceUnavailable            service_unavailable, 503 (transient): a
    │                                 dependency (Redis, the database, WebRTC
    │                                 media) is down, or the server is draining
    └── BillingError                  billing_error, 502 (billing.stripe_api)
        ├── BillingNotConfigured      billing_not_configured, 503
        ├── StripeUnavailable         stripe_unavailable, 502 (transient)
        └── StripeRejected            stripe_rejected, 502 (Stripe answered 4xx)
    ConfigError                       not rendered to clients; raised at start-up
    └── MigrationError                the schema cannot be brought up to date (store.migrate)
        ├── ChecksumMismatch          an applied migration's file was changed
        └── PendingMigrations         migrations pending and auto_migrate is off

A dependency's exception is translated into this tree where it is raised
(``raise ServiceUnavailable(...) from exc``: the store's connection layer for
the database drivers, ``voxgate.admission.redis`` for Redis, the WebRTC
call for aiortc); ``dependency_error`` only recognises what is already
translated, and a refused TCP connection.

Error bodies follow the OpenAI API error object
(https://platform.openai.com/docs/guides/error-codes): ``{"error": {"type",
"code", "message", "param"}}``; the Realtime ``error`` event wraps the same
object with ``"type": "error"`` and an ``event_id``
(https://platform.openai.com/docs/api-reference/realtime-server-events/error).
"""

from __future__ import annotations

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
    "HeaderFieldsTooLarge",
    "UriTooLong",
    "InvalidSdp",
    "UpstreamRefused",
    "ProviderKeyRefused",
    "UnsafeUrl",
    "BillingError",
    "BillingNotConfigured",
    "StripeUnavailable",
    "StripeRejected",
    "MigrationError",
    "ChecksumMismatch",
    "PendingMigrations",
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


def dependency_error(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 to answer for ``exc`` when it says a dependency is unreachable
    or overloaded: a ``ServiceUnavailable`` (the adapters raise one, chained
    from the driver's exception, where the driver raised it; see the module
    docstring) or, anywhere, a refused TCP connection; else None. The
    message names the dependency, never the address or credentials."""
    if isinstance(exc, ServiceUnavailable):
        return exc
    if isinstance(exc, ConnectionRefusedError):
        return ServiceUnavailable("a backing service is unavailable; retry shortly")
    return None


class ConfigError(Exception):
    """Invalid configuration or catalog; raised at start-up, never sent to clients."""


# -- leaves raised by one room each (re-exported there) ------------------------


class HeaderFieldsTooLarge(InvalidRequest):
    """Request header fields too large (RFC 6585 section 5)."""

    code = "request_header_fields_too_large"
    status = 431


class UriTooLong(InvalidRequest):
    """Request target too long (RFC 9110 section 15.5.15)."""

    code = "uri_too_long"
    status = 414


class InvalidSdp(InvalidRequest):
    """The SDP offer cannot be answered."""

    code = "invalid_sdp"


class UpstreamRefused(InvalidRequest):
    """The provider refused the client's request at the handshake (HTTP 4xx:
    unknown model, bad parameter). The client's fault, not a provider error."""

    code = "upstream_refused"


class ProviderKeyRefused(UpstreamError):
    """The provider answered 401 to the project's own provider key (BYOK):
    the customer's key, not voxgate's, was refused. Permanent until the key
    is replaced."""

    code = "provider_key_refused"
    permanent = True


class UnsafeUrl(InvalidRequest):
    """A webhook URL voxgate will not send to."""

    code = "unsafe_url"


class BillingError(VoxgateError):
    """Billing (Stripe) failed."""

    type = "billing_error"
    code = "billing_error"
    status = 502


class BillingNotConfigured(BillingError):
    """No Stripe key is configured."""

    code = "billing_not_configured"
    status = 503


class StripeUnavailable(BillingError):
    """Stripe could not be reached or answered 5xx/429: retrying may help."""

    code = "stripe_unavailable"
    status = 502
    permanent = False


class StripeRejected(BillingError):
    """Stripe refused the request (4xx). ``http_status`` and ``stripe_code``
    carry Stripe's answer."""

    code = "stripe_rejected"
    status = 502

    def __init__(self, message: str, *, http_status: int | None = None,
                 stripe_code: str | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.stripe_code = stripe_code


class MigrationError(ConfigError):
    """The schema cannot be brought to this voxgate's version: a migration
    failed (nothing of it applied), or waited too long for a lock. A
    ``ConfigError``: the command line prints its one-line message and stops."""


class ChecksumMismatch(MigrationError):
    """An applied migration's file is no longer what was applied (its
    checksum differs from the one recorded): voxgate refuses to start.

    Args:
        migration: the ``voxgate.store.migrate.Migration`` (``label``,
            ``checksum``, ``path``).
        recorded: the checksum recorded when it was applied (hex).
    """

    def __init__(self, migration: Any, recorded: str) -> None:
        super().__init__(
            f"migration {migration.label} was changed after it was applied to this database "
            f"(checksum now {migration.checksum[:12]}…, {recorded[:12]}… when applied): "
            f"restore {migration.path} as it was; change a schema with a new migration, "
            f"never by editing an applied one")
        self.migration = migration
        self.recorded = recorded


class PendingMigrations(MigrationError):
    """Migrations are pending and this store may not apply them at open
    (``auto_migrate = false``): ``pending`` lists them (``Migration``s)."""

    def __init__(self, pending: list[Any]) -> None:
        names = ", ".join(m.path.name for m in pending)
        super().__init__(
            f"{len(pending)} schema migration(s) pending ({names}) and auto_migrate is off: "
            f"run `voxgate migrate` first (or set auto_migrate = true)")
        self.pending = pending


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
