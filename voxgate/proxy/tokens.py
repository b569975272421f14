"""The SDK token endpoint: ephemeral client secrets.

``POST /v1/realtime/client_secrets`` follows OpenAI's GA endpoint
(https://platform.openai.com/docs/api-reference/realtime-sessions/create-realtime-client-secret):

request  ``{"expires_after": {"anchor": "created_at", "seconds": 10..7200},
"session": {"type": "realtime", "model": …, …}}`` (both optional)
→ ``{"value": "ek_…", "expires_at": <unix s>, "session": {…}}``.

The beta endpoint ``POST /v1/realtime/sessions`` is also served: the session
object with ``client_secret: {"value", "expires_at"}``.

Authenticated with a project API key; refused with 429 when the account's
quota is used up or the key's rate limit is hit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from voxgate.errors import InvalidRequest
from voxgate.models import Principal
from voxgate.models.realtime import (
    DEFAULT_AUDIO_FORMAT,
    DEFAULT_INSTRUCTIONS,
    DEFAULT_TURN_DETECTION,
    DEFAULT_VOICE,
    turn_detection,
)
from voxgate.proxy.auth import authenticate, session_model
from voxgate.proxy.gateway import Gateway
from voxgate.proxy.http import json_response, read_json, with_body
from voxgate.proxy.keys import GATEWAY

__all__ = ["client_secrets", "beta_sessions", "mint", "parse_client_secret_request", "session_object",
           "ICE_SERVERS_HOOK"]

SESSION_TYPES = ("realtime", "transcription")

# Set by the WebRTC module: (app, project_id) -> list of RTCIceServer dicts.
ICE_SERVERS_HOOK = web.AppKey[Callable[[web.Application, str], list[dict[str, Any]]]]("ice_servers_hook")


def parse_client_secret_request(
    body: Any, *, default_ttl_s: int, min_ttl_s: int, max_ttl_s: int
) -> tuple[int, dict[str, Any]]:
    """Validate a client-secret request body.

    Returns:
        (lifetime in seconds, session config).

    Raises:
        InvalidRequest: wrong shape, anchor other than ``created_at``, seconds
            out of ``[min_ttl_s, max_ttl_s]``, session not an object or of an
            unknown type.
    """
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    ttl = default_ttl_s
    expires_after = body.get("expires_after")
    if expires_after is not None:
        if not isinstance(expires_after, dict):
            raise InvalidRequest("'expires_after' must be an object", param="expires_after")
        anchor = expires_after.get("anchor", "created_at")
        if anchor != "created_at":
            raise InvalidRequest(
                f"invalid 'expires_after.anchor' {anchor!r}: only 'created_at' is supported",
                param="expires_after.anchor", code="invalid_value",
            )
        seconds = expires_after.get("seconds", default_ttl_s)
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            raise InvalidRequest("'expires_after.seconds' must be an integer",
                                 param="expires_after.seconds", code="invalid_type")
        if not min_ttl_s <= seconds <= max_ttl_s:
            raise InvalidRequest(
                f"'expires_after.seconds' must be between {min_ttl_s} and {max_ttl_s}, got {seconds}",
                param="expires_after.seconds", code="integer_out_of_range",
            )
        ttl = seconds
    session = body.get("session", {"type": "realtime"})
    if not isinstance(session, dict):
        raise InvalidRequest("'session' must be an object", param="session")
    stype = session.get("type", "realtime")
    if stype not in SESSION_TYPES:
        raise InvalidRequest(
            f"invalid 'session.type' {stype!r}: expected 'realtime' or 'transcription'",
            param="session.type", code="invalid_value",
        )
    return ttl, {**session, "type": stype}


def session_object(session: dict[str, Any], default_model: str,
                   expires_at: int = 0) -> dict[str, Any]:
    """The session object returned with a client secret: the request's
    config over the session defaults the provider's sessions start with
    (``voxgate.models.realtime``: instructions, voice, audio formats, turn
    detection, with a partial ``turn_detection`` filled in as a live session
    fills it), so it is what the key's sessions show in ``session.created``;
    ``expires_at`` is the key's expiry (Unix s).

    Raises:
        InvalidRequest: an invalid ``audio.input.turn_detection`` (param names
            the field).
    """
    fmt = DEFAULT_AUDIO_FORMAT.to_session()
    audio_defaults: dict[str, dict[str, Any]] = {
        "input": {
            "format": fmt,
            "transcription": None,
            "noise_reduction": None,
            "turn_detection": dict(DEFAULT_TURN_DETECTION),
        },
        "output": {"format": fmt, "voice": DEFAULT_VOICE, "speed": 1.0},
    }
    given_audio = session.get("audio")
    audio: dict[str, Any] = given_audio if isinstance(given_audio, dict) else {}
    merged_audio = {
        side: {**audio_defaults[side], **(audio.get(side) or {})} for side in ("input", "output")
    }
    if "turn_detection" in (audio.get("input") or {}):
        merged_audio["input"]["turn_detection"] = turn_detection(
            audio["input"]["turn_detection"], None, "session.audio.input.turn_detection")
    return {
        "type": session.get("type", "realtime"),
        "object": "realtime.session",
        "id": "sess_" + uuid.uuid4().hex[:24],
        "model": session.get("model", default_model),
        "output_modalities": session.get("output_modalities", ["audio"]),
        "instructions": session.get("instructions", DEFAULT_INSTRUCTIONS),
        "tools": session.get("tools", []),
        "tool_choice": session.get("tool_choice", "auto"),
        "max_output_tokens": session.get("max_output_tokens", "inf"),
        "tracing": session.get("tracing"),
        "truncation": session.get("truncation", "auto"),
        "prompt": session.get("prompt"),
        "expires_at": expires_at,
        "include": session.get("include"),
        "audio": merged_audio,
    }


async def mint(app: web.Application, principal: Principal, session: dict[str, Any],
               ttl_s: int) -> dict[str, Any]:
    """Count the request against the key's rate limit, check the quota, and
    mint an ephemeral key for ``principal``'s project carrying ``session``.

    Returns:
        The GA response body ``{"value", "expires_at", "session"}``, plus
        ``ice_servers`` when the WebRTC room hands out TURN credentials.

    Raises:
        RateLimited, QuotaExceeded, InvalidRequest (an invalid
        ``audio.input.turn_detection``).
    """
    gw: Gateway = app[GATEWAY]
    upstream = gw.settings.upstream
    requested = session.get("model")
    plan = await gw.account_plan(principal.account)
    model = session_model(principal, requested if isinstance(requested, str) else None,
                          upstream.default_model, upstream.allowed_models, plan.models)
    session = {**session, "model": model}
    await gw.check_mint(principal)
    expires_at = int(time.time()) + ttl_s
    shown = session_object(session, gw.settings.upstream.default_model, expires_at)
    _, value = await gw.store.create_ephemeral_key(
        principal.project.id, session, float(expires_at),
        api_key_id=principal.api_key.id if principal.api_key else None,
    )
    body: dict[str, Any] = {"value": value, "expires_at": expires_at, "session": shown}
    hook = app.get(ICE_SERVERS_HOOK)
    if hook is not None:
        ice = hook(app, principal.project.id)
        if ice:
            body["ice_servers"] = ice
    return body


async def _requested(request: web.Request) -> tuple[Principal, dict[str, Any], int]:
    """The caller (a project API key), its validated session and lifetime."""
    gw: Gateway = request.app[GATEWAY]
    principal = await authenticate(request, gw.store, allow_ephemeral=False)
    tokens = gw.settings.tokens
    ttl, session = parse_client_secret_request(
        await read_json(request, allow_empty=True), default_ttl_s=tokens.default_ttl_s,
        min_ttl_s=tokens.min_ttl_s, max_ttl_s=tokens.max_ttl_s,
    )
    return principal, session, ttl


async def client_secrets(request: web.Request) -> web.Response:
    """``POST /v1/realtime/client_secrets`` (GA)."""
    return json_response(await mint(request.app, *await _requested(request)))


async def beta_sessions(request: web.Request) -> web.Response:
    """``POST /v1/realtime/sessions`` (beta shape)."""
    body = await read_json(request, allow_empty=True)
    if isinstance(body, dict) and "session" not in body and "expires_after" not in body:
        # beta bodies are the session object itself
        request = with_body(request, {"session": {"type": "realtime", **body}})
    minted = await mint(request.app, *await _requested(request))
    return json_response({**minted["session"],
                          "client_secret": {"value": minted["value"],
                                            "expires_at": minted["expires_at"]}})
