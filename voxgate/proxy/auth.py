"""Who is calling: a project API key, an ephemeral key or an account admin
key, from the ``Authorization: Bearer …`` header or, for browsers that cannot
set headers, the WebSocket subprotocols ``realtime, openai-insecure-api-key.<key>``
(as OpenAI accepts them: https://platform.openai.com/docs/guides/realtime-websocket).

Scopes: ephemeral keys open realtime sessions only (a route says so with
``allow_ephemeral=True``); project keys act for their own project, from the
networks it allows; account-wide reads and billing actions take an admin key
(``voxgate.proxy.api.admin_caller``) or the dashboard's sign-in.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from aiohttp import web

from voxgate.errors import AuthenticationError, EphemeralKeyExpired, InvalidRequest, PermissionDenied
from voxgate.models import (
    ADMIN_KEY_PREFIX,
    API_KEY_PREFIX,
    EPHEMERAL_KEY_PREFIX,
    Account,
    AdminKey,
    Principal,
)
from voxgate.models.origins import origin_allowed, parse_ip
from voxgate.store.base import Store

__all__ = ["bearer_key", "resolve", "authenticate", "resolve_admin", "ip_allowed", "session_model",
           "INSECURE_KEY_PROTOCOL", "AdminCaller"]

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
    allow_ephemeral: bool = False,
    allow_api_key: bool = True,
    project_id: str | None = None,
    now: float | None = None,
) -> Principal:
    """Resolve a key to its account, project and key record.

    Args:
        project_id: the project the request names (``OpenAI-Project`` header);
            a key of another project is refused.

    Raises:
        AuthenticationError: missing, unknown, revoked or wrong-kind key (an
            ephemeral key where the route does not open realtime sessions, an
            admin key where a project key is needed); an ephemeral key whose
            minting API key was revoked or whose project was deleted.
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
            raise AuthenticationError(
                "this route takes a project API key (vg_live_…): ephemeral keys (ek_…) open "
                "realtime sessions only")
        found_ek = await store.find_ephemeral_key(key)
        if found_ek is None:
            raise AuthenticationError("invalid ephemeral key")
        ek, project, account = found_ek
        if ek.revoked:
            raise AuthenticationError(
                "this ephemeral key is revoked: the API key that minted it was revoked or its "
                "project deleted")
        if ek.expired(now):
            raise EphemeralKeyExpired(
                f"ephemeral key expired at {int(ek.expires_at)} (now {int(now)}); mint a new one"
            )
        principal = Principal(account=account, project=project, ephemeral=ek)
    elif key.startswith(API_KEY_PREFIX):
        if not allow_api_key:
            raise AuthenticationError("this endpoint needs an ephemeral key")
        found_key = await store.find_api_key(key)
        if found_key is None:
            raise AuthenticationError(f"incorrect API key provided: {_redact(key)}")
        api_key, project, account = found_key
        if not api_key.active:
            raise AuthenticationError(f"API key {api_key.prefix}… has been revoked")
        principal = Principal(account=account, project=project, api_key=api_key)
    elif key.startswith(ADMIN_KEY_PREFIX):
        raise AuthenticationError(
            "this route takes a project API key (vg_live_…), not an admin key (vg_admin_…): "
            "admin keys read the account and act on its billing, they open no sessions")
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
            origin (``Origin`` header; code ``origin_not_allowed``); an API
            key of a project with an IP allowlist, from another address
            (the TCP peer, ``request.remote``; code ``ip_not_allowed``).
    """
    principal = await resolve(
        store, bearer_key(request), project_id=request.headers.get("OpenAI-Project") or None, **kw
    )
    if principal.api_key is not None and not ip_allowed(request.remote,
                                                        principal.project.allowed_ips):
        raise PermissionDenied(
            f"this API key's project does not allow requests from {request.remote}",
            code="ip_not_allowed")
    if principal.ephemeral is not None:
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, principal.project.allowed_origins):
            raise PermissionDenied(
                f"this ephemeral key's project does not allow requests from origin {origin!r}; "
                "add it to the project's allowed origins", code="origin_not_allowed",
                param="Origin")
    return principal


@dataclass(frozen=True, slots=True)
class AdminCaller:
    """An account-wide caller: an admin key's account (``key`` set) or a
    signed-in dashboard user's (``key`` None)."""

    account: Account
    key: AdminKey | None = None


async def resolve_admin(store: Store, key: str | None) -> AdminCaller:
    """Resolve an account admin key (``vg_admin_…``).

    Raises:
        AuthenticationError: missing, unknown or revoked key; an ephemeral
            key (401 ``invalid_api_key``).
        PermissionDenied: a project key (it acts for one project only), or
            a closed account.
    """
    if key and key.startswith(API_KEY_PREFIX):
        raise PermissionDenied(
            "this route reads the whole account or acts on its billing: it takes an admin key "
            "(vg_admin_…, created by the account owner on the dashboard) or the dashboard's "
            "sign-in, not a project key")
    if not key or not key.startswith(ADMIN_KEY_PREFIX):
        if key and key.startswith(EPHEMERAL_KEY_PREFIX):
            raise AuthenticationError(
                "this route takes an admin key (vg_admin_…): ephemeral keys (ek_…) open "
                "realtime sessions only")
        raise AuthenticationError(
            "missing admin key: send 'Authorization: Bearer vg_admin_…'" if not key
            else f"incorrect API key provided: {_redact(key)}")
    found = await store.find_admin_key(key)
    if found is None:
        raise AuthenticationError(f"incorrect API key provided: {_redact(key)}")
    admin, account = found
    if not admin.active:
        raise AuthenticationError(f"admin key {admin.prefix}… has been revoked")
    if account.status == "canceled":
        raise PermissionDenied("this account is closed")
    return AdminCaller(account, admin)


def session_model(principal: Principal, requested: str | None, default: str,
                  operator_models: tuple[str, ...] | list[str] = (),
                  plan_models: tuple[str, ...] | list[str] = ()) -> str:
    """The model a session, or an ephemeral key being minted, uses: the one
    requested (``?model=``, the ``session.model`` of a mint or of a call's
    ``session`` part), else the ephemeral key's, else ``default``. A pure
    function.

    Raises:
        InvalidRequest (400): ``model_mismatch``: an ephemeral key minted for
            one model asked for another; ``model_not_allowed``: a model
            outside the operator's ``upstream.allowed_models``, the
            project's ``allowed_models`` or the account plan's ``models``
            (``plan_models``).
    """
    ek_model = principal.ephemeral.session.get("model") if principal.ephemeral else None
    ek_model = ek_model if isinstance(ek_model, str) and ek_model else None
    if requested and ek_model and requested != ek_model:
        raise InvalidRequest(
            f"this ephemeral key was minted for model {ek_model!r}; it cannot open a session "
            f"with {requested!r}", code="model_mismatch", param="model")
    pins = [(tuple(operator_models), "voxgate"), (principal.project.allowed_models,
                                                  "this project"), (tuple(plan_models), "your plan")]
    model = requested or ek_model
    if model is None:
        candidates = [default] + [m for allowed, _ in pins for m in allowed]
        model = next((m for m in candidates
                      if all(not allowed or m in allowed for allowed, _ in pins)), default)
    for allowed, who in pins:
        if allowed and model not in allowed:
            raise InvalidRequest(
                f"model {model!r} is not allowed for {who}; allowed: {', '.join(allowed)}",
                code="model_not_allowed", param="model")
    return model


def ip_allowed(remote: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a request from ``remote`` (an IP address) may use a key of a
    project whose IP allowlist is ``allowed`` (CIDRs); empty allows any."""
    if not allowed:
        return True
    address = parse_ip(remote)
    return address is not None and any(
        address in ipaddress.ip_network(cidr, strict=False) for cidr in allowed)


def _redact(key: str) -> str:
    """OpenAI-style redaction: the first 6 and last 4 characters."""
    return key[:6] + "*" * 4 + key[-4:] if len(key) > 12 else "****"
