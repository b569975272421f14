"""Who is calling: a project API key or an ephemeral key, from the
``Authorization: Bearer …`` header or, for browsers that cannot set headers,
the WebSocket subprotocols ``realtime, openai-insecure-api-key.<key>``
(as OpenAI accepts them: https://platform.openai.com/docs/guides/realtime-websocket).
"""

from __future__ import annotations

import time

from aiohttp import web

from voxgate.errors import AuthenticationError, EphemeralKeyExpired, PermissionDenied
from voxgate.metering.store import Store
from voxgate.models import API_KEY_PREFIX, EPHEMERAL_KEY_PREFIX, Principal
from voxgate.models.origins import origin_allowed

__all__ = ["bearer_key", "resolve", "authenticate", "INSECURE_KEY_PROTOCOL"]

INSECURE_KEY_PROTOCOL = "openai-insecure-api-key."


def bearer_key(request: web.Request) -> str | None:
    """The key from ``Authorization: Bearer`` or the insecure-key subprotocol;
    None when neither is present."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        key = auth[7:].strip()
        if key:
            return key
    for proto in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        proto = proto.strip()
        if proto.startswith(INSECURE_KEY_PROTOCOL):
            return proto[len(INSECURE_KEY_PROTOCOL):]
    return None


async def resolve(
    store: Store,
    key: str | None,
    *,
    allow_ephemeral: bool = True,
    allow_api_key: bool = True,
    project_id: str | None = None,
    now: float | None = None,
) -> Principal:
    """Resolve a key to its account, project and key record.

    Args:
        project_id: the project the request names (``OpenAI-Project`` header);
            a key of another project is refused.

    Raises:
        AuthenticationError: missing, unknown, revoked or wrong-kind key.
        EphemeralKeyExpired: an ephemeral key past ``expires_at``.
        PermissionDenied: the key belongs to another project than the one named,
            or its account is closed.
    """
    if not key:
        raise AuthenticationError(
            "missing API key: send 'Authorization: Bearer <key>' with a voxgate "
            "project API key or ephemeral key"
        )
    now = time.time() if now is None else now
    if key.startswith(EPHEMERAL_KEY_PREFIX):
        if not allow_ephemeral:
            raise AuthenticationError("this endpoint needs a project API key, not an ephemeral key")
        found = await store.find_ephemeral_key(key)
        if found is None:
            raise AuthenticationError("invalid ephemeral key")
        ek, project, account = found
        if ek.expired(now):
            raise EphemeralKeyExpired(
                f"ephemeral key expired at {int(ek.expires_at)} (now {int(now)}); mint a new one"
            )
        principal = Principal(account=account, project=project, ephemeral=ek)
    elif key.startswith(API_KEY_PREFIX):
        if not allow_api_key:
            raise AuthenticationError("this endpoint needs an ephemeral key")
        found = await store.find_api_key(key)
        if found is None:
            raise AuthenticationError(f"incorrect API key provided: {_redact(key)}")
        api_key, project, account = found
        if not api_key.active:
            raise AuthenticationError(f"API key {api_key.prefix}… has been revoked")
        principal = Principal(account=account, project=project, api_key=api_key)
    else:
        raise AuthenticationError(f"incorrect API key provided: {_redact(key)}")
    if project_id and project_id != principal.project.id:
        raise PermissionDenied(
            f"this key belongs to another project than {project_id!r}", param="OpenAI-Project"
        )
    if principal.account.status == "canceled":
        raise PermissionDenied("this account is closed")
    return principal


async def authenticate(request: web.Request, store: Store, **kw) -> Principal:
    """``resolve`` the request's key, honouring an ``OpenAI-Project`` header
    and, for an ephemeral key, its project's allowed web origins.

    Raises:
        PermissionDenied: (besides ``resolve``'s) an ephemeral key of a
            project with an origin allowlist, sent from a page of another
            origin (``Origin`` header; code ``origin_not_allowed``).
    """
    principal = await resolve(
        store, bearer_key(request), project_id=request.headers.get("OpenAI-Project") or None, **kw
    )
    if principal.ephemeral is not None:
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, principal.project.allowed_origins):
            raise PermissionDenied(
                f"this ephemeral key's project does not allow requests from origin {origin!r}; "
                "add it to the project's allowed origins", code="origin_not_allowed",
                param="Origin")
    return principal


def _redact(key: str) -> str:
    """OpenAI-style redaction: the first 6 and last 4 characters."""
    return key[:6] + "*" * 4 + key[-4:] if len(key) > 12 else "****"
