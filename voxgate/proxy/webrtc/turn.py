"""ICE servers for WebRTC calls: STUN, and TURN with short-lived credentials.

TURN credentials follow the TURN REST API convention that coturn implements
with ``use-auth-secret`` / ``static-auth-secret``
(draft-uberti-behave-turn-rest-00 §2.2): the username is
``<expiry unix seconds>:<user>`` and the password is
``base64(HMAC-SHA1(secret, username))``. The TURN server recomputes the HMAC
and refuses the username once its expiry has passed, so nothing is stored.

Clients receive the list as W3C ``RTCIceServer`` dictionaries
(https://www.w3.org/TR/webrtc/#rtciceserver-dictionary):
``{"urls": [...], "username": ..., "credential": ...}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from aiortc import RTCIceServer

from voxgate.config import WebRTCSettings

__all__ = ["turn_credentials", "client_ice_servers", "server_ice_servers", "SERVER_USER"]

SERVER_USER = "voxgate"
"""The user part of the TURN username voxgate's own peer connections use."""


def turn_credentials(secret: str, user: str, ttl_s: int, now_s: float) -> tuple[str, str]:
    """TURN REST credentials valid for ``ttl_s`` seconds from ``now_s`` (Unix).

    Returns:
        (username ``"<expiry>:<user>"``, credential ``base64(HMAC-SHA1(secret, username))``).
    """
    username = f"{int(now_s) + ttl_s}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def client_ice_servers(
    settings: WebRTCSettings, user: str, now_s: float | None = None
) -> list[dict[str, Any]]:
    """The ``RTCIceServer`` list handed to a client of project ``user``:
    the STUN server (if any), then the TURN URLs with fresh credentials
    (if a TURN server and its secret are configured)."""
    now_s = time.time() if now_s is None else now_s
    servers: list[dict[str, Any]] = []
    if settings.stun_url:
        servers.append({"urls": [settings.stun_url]})
    if settings.turn_urls and settings.turn_secret is not None:
        username, credential = turn_credentials(
            settings.turn_secret.get_secret_value(), user, settings.turn_ttl_s, now_s
        )
        servers.append({"urls": list(settings.turn_urls), "username": username,
                        "credential": credential})
    return servers


def server_ice_servers(settings: WebRTCSettings, now_s: float | None = None) -> list[RTCIceServer]:
    """``RTCIceServer`` objects for voxgate's own peer connections.

    aiortc uses one STUN and one TURN server per connection
    (``aiortc.rtcicetransport.connection_kwargs``), so only the first TURN
    URL is used. Never aiortc's default Google STUN server: an empty
    ``stun_url`` means no STUN (probing stalls gathering).
    """
    servers: list[RTCIceServer] = []
    if settings.stun_url:
        servers.append(RTCIceServer(urls=settings.stun_url))
    for entry in client_ice_servers(settings, SERVER_USER, now_s):
        turn_urls = [u for u in entry["urls"] if u.startswith(("turn:", "turns:"))]
        if turn_urls and "username" in entry:
            servers.append(RTCIceServer(urls=turn_urls[0], username=entry["username"],
                                        credential=entry["credential"]))
            break
    return servers
