"""Upstream connectors: open the provider's realtime WebSocket with the
server's own key. Both connectors (``openai`` and ``local``) go through the
same code path over a real WebSocket.

OpenAI: ``wss://api.openai.com/v1/realtime?model=…`` with
``Authorization: Bearer $OPENAI_API_KEY``, GA protocol, no ``OpenAI-Beta``
header (https://platform.openai.com/docs/guides/realtime-websocket).

An ephemeral key's session config is not given at connect time: OpenAI's
WebSocket takes none (only a key minted with the config would carry it,
which costs an HTTPS round trip to ``/v1/realtime/client_secrets`` before
every session and counts against its connect latency). The relays send it
as the first ``session.update`` instead and fold the answer into the
client's ``session.created`` (``voxgate.proxy.events.KeySession``), the same
for OpenAI and the local provider.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp
import orjson

from voxgate.errors import ProviderKeyRefused, UpstreamError, UpstreamRefused

__all__ = ["UpstreamConnector", "UpstreamRefused", "OPENAI_REALTIME_URL", "upstream_end",
           "PROVIDER_LOST", "PROVIDER_RESET", "PROVIDER_TIMEOUT"]

OPENAI_REALTIME_URL = "wss://api.openai.com/v1/realtime"

# Query parameters passed through to the local provider only.
LOCAL_PASSTHROUGH = ("voxgate_fault",)


PROVIDER_LOST = "provider connection lost"
"""Close reason of a provider connection that ended without a close frame
(EOF): recorded with close code 1006."""
PROVIDER_RESET = "provider connection reset"
"""Close reason of a provider connection reset (TCP RST), close code 1006."""
PROVIDER_TIMEOUT = "provider keepalive timeout"
# A 401 to a project's own provider key (BYOK): the customer's key, not voxgate, was refused.
CUSTOMER_KEY_REFUSED = ("the provider refused this project's own API key (HTTP 401): check or "
                        "replace the key in the project's settings")
"""Close reason prefix of a provider that stopped answering pings (1006)."""


def upstream_end(ws: aiohttp.ClientWebSocketResponse,
                 msg: aiohttp.WSMessage) -> tuple[int | None, str | None]:
    """How the provider's connection ended: ``(close code, reason)`` from the
    message that ended the upstream reader.

    A close frame gives its own code and reason. Without one (EOF, reset,
    keepalive timeout) the code is 1006 (abnormal closure, RFC 6455 §7.1.5)
    and the reason says which — not aiohttp's own close code (it records an
    EOF as 1000) nor the error of its attempt to answer a vanished peer
    ("Cannot write to closing transport"). A frame the provider sent that
    breaks the protocol keeps aiohttp's code (1002, 1007, 1009)."""
    if msg.type is aiohttp.WSMsgType.CLOSE:
        return msg.data, msg.extra or None
    exc = msg.data if msg.type is aiohttp.WSMsgType.ERROR else None
    if isinstance(exc, aiohttp.WebSocketError):
        return exc.code, f"provider protocol error: {exc}"[:200]
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return 1006, f"{PROVIDER_TIMEOUT}: {exc}" if str(exc) else PROVIDER_TIMEOUT
    for err in (exc, ws.exception()):
        # aiohttp's ClientConnectionResetError is a ConnectionResetError too:
        # its own write to a closed transport, not the provider's reset
        if (isinstance(err, ConnectionResetError)
                and not isinstance(err, aiohttp.ClientConnectionResetError)):
            return 1006, PROVIDER_RESET
    return 1006, PROVIDER_LOST


@dataclass
class UpstreamConnector:
    """Opens upstream WebSockets.

    Args:
        provider: ``local`` or ``openai``.
        url: realtime WebSocket URL without query.
        api_key: the server's provider key (never sent to clients).
        connect_timeout_s: handshake timeout, seconds.
        max_message_bytes: largest upstream message accepted, bytes.
    """

    provider: str
    url: str
    api_key: str
    connect_timeout_s: float = 10.0
    max_message_bytes: int = 16 * 1024 * 1024
    heartbeat_s: float | None = 20.0
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def target(self, model: str, query: dict[str, str] | None = None) -> str:
        params = {"model": model}
        if self.provider == "local" and query:
            params.update({k: v for k, v in query.items() if k in LOCAL_PASSTHROUGH})
        return f"{self.url}?{urlencode(params)}"

    async def connect(
        self, model: str, query: dict[str, str] | None = None, *, keepalive: bool = True,
        api_key: str | None = None,
    ) -> aiohttp.ClientWebSocketResponse:
        """Open the upstream WebSocket for ``model``.

        ``keepalive=False`` leaves pings and pongs to the caller (aiohttp's
        heartbeat and automatic pong off; PING/PONG messages are returned).
        ``api_key``: the project's own provider key (BYOK,
        ``voxgate.proxy.provider_keys``) instead of the server's.

        Raises:
            UpstreamRefused: the provider answered the handshake with a 4xx
                (its error message is carried over).
            UpstreamError: unreachable, timed out, or a 5xx; a 401 to the
                project's own key says the customer's key was refused.
        """
        await self.start()
        assert self._session is not None
        url = self.target(model, query)
        headers = {"Authorization": f"Bearer {api_key or self.api_key}"}
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                return await self._session.ws_connect(
                    url,
                    headers=headers,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                    max_msg_size=self.max_message_bytes,
                    heartbeat=self.heartbeat_s if keepalive else None,
                    autoping=keepalive,
                    compress=0,
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401 and api_key:
                raise ProviderKeyRefused(CUSTOMER_KEY_REFUSED) from exc
            if 400 <= exc.status < 500 and exc.status not in (401, 403, 429):
                detail = await self._refusal_detail(url, headers) or exc.message
                raise UpstreamRefused(
                    f"the provider refused the session (HTTP {exc.status}): {detail}",
                    param="model" if "model" in str(detail).lower() else None,
                ) from exc
            raise UpstreamError(
                f"the provider answered the handshake with HTTP {exc.status}"
            ) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"cannot reach the provider: {type(exc).__name__}: {exc}") from exc

    async def _refusal_detail(self, url: str, headers: dict[str, str]) -> str | None:
        """Fetch the JSON error body of a refused handshake (aiohttp does not
        keep it): the same URL without the upgrade. Best effort."""
        assert self._session is not None
        http_url = url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
        try:
            async with self._session.get(
                http_url, headers=headers, timeout=aiohttp.ClientTimeout(total=2)
            ) as resp:
                body = await resp.json(loads=orjson.loads, content_type=None)
            return str(body["error"]["message"])
        except Exception:  # noqa: BLE001 - best effort only
            return None

