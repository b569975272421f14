"""OpenAI SIP calls, the pure part: the webhook's Standard Webhooks
signature, the ``realtime.call.incoming`` event, routes from a call to a
project, the SIP status of a refused call, the accept body, and the audio
a call's sideband events report. No I/O, no clock: times come in.

Followed:

- OpenAI "Realtime API with SIP"
  (https://platform.openai.com/docs/guides/realtime-sip) and the webhook
  event ``realtime.call.incoming``
  (``{"object": "event", "id", "type", "created_at", "data": {"call_id",
  "sip_headers": [{"name", "value"}, …]}}``).
- Standard Webhooks (https://www.standardwebhooks.com/, as OpenAI's SDK
  checks it in ``openai.lib._webhooks``): headers ``webhook-id``,
  ``webhook-timestamp`` (Unix s), ``webhook-signature`` = space-separated
  ``v1,<base64>`` values, each the HMAC-SHA256 of
  ``"<webhook-id>.<webhook-timestamp>.<body>"`` with the secret (``whsec_``
  + base64 of the key bytes; a secret without the prefix is used as its
  UTF-8 bytes); any one matching passes; the timestamp must be within the
  tolerance either side of now.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from voxgate.config import SipRouteSettings
from voxgate.errors import (
    ConcurrencyLimited,
    InvalidRequest,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    VoxgateError,
)

__all__ = [
    "CALL_INCOMING", "WebhookSignatureError", "IncomingCall", "sign", "verify_signature",
    "parse_incoming", "called_number", "normalize_number", "header_values", "route_call",
    "reject_status", "accept_body", "ReportedAudio", "OUTPUT_AUDIO_MS_PER_TOKEN",
    "SIP_BUSY_HERE", "SIP_DECLINE", "SIP_NOT_FOUND", "SIP_SERVICE_UNAVAILABLE",
    "valid_target_uri",
]

CALL_INCOMING = "realtime.call.incoming"

# SIP response codes (RFC 3261 §21) a refused call is rejected with
SIP_NOT_FOUND = 404  # no route to a project for the called number / header
SIP_BUSY_HERE = 486  # the project is at its concurrency (or request-rate) limit
SIP_SERVICE_UNAVAILABLE = 503  # voxgate is draining or its database/Redis is down
SIP_DECLINE = 603  # over quota, account closed or past due, a model not allowed

OUTPUT_AUDIO_MS_PER_TOKEN = 50.0
"""Milliseconds of assistant audio per output audio token (OpenAI Realtime:
1 token per 50 ms; the local provider counts the same, ``voxgate.voice.usage``)."""


class WebhookSignatureError(InvalidRequest):
    """A webhook delivery whose Standard Webhooks signature does not verify
    (missing headers, a stale or future timestamp, no matching ``v1``
    signature): HTTP 400, nothing done."""

    code = "invalid_webhook_signature"


def _secret_bytes(secret: str) -> bytes:
    """The HMAC key of a webhook secret: ``whsec_<base64>`` decoded, else
    the string's UTF-8 bytes (as OpenAI's SDK does)."""
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret[6:], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("the webhook secret whsec_… is not valid base64") from exc
    else:
        key = secret.encode()
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def sign(secret: str, webhook_id: str, timestamp: int | str, body: bytes) -> str:
    """The ``webhook-signature`` value of a delivery: ``v1,<base64 of
    HMAC-SHA256(key, f"{webhook_id}.{timestamp}.".encode() + body)>``."""
    mac = hmac.new(_secret_bytes(secret), f"{webhook_id}.{timestamp}.".encode() + body,
                   hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, now: float,
                     tolerance_s: float) -> str:
    """Check a delivery's signature; returns its ``webhook-id``.

    Args:
        headers: the request headers (case-insensitive lookups if the
            mapping is, e.g. aiohttp's ``CIMultiDictProxy``).
        body: the raw request body, bytes, exactly as received.
        now: Unix s. tolerance_s: seconds either side of ``now``.

    Raises:
        WebhookSignatureError: a header missing, a timestamp not an
            integer or outside the tolerance, or no ``v1`` signature
            matching.
    """
    webhook_id = headers.get("webhook-id") or ""
    timestamp = headers.get("webhook-timestamp") or ""
    signatures = headers.get("webhook-signature") or ""
    if not webhook_id or not timestamp or not signatures:
        raise WebhookSignatureError(
            "missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookSignatureError(f"webhook-timestamp {timestamp[:20]!r} is not Unix seconds",
                                    param="webhook-timestamp") from None
    if now - sent_at > tolerance_s:
        raise WebhookSignatureError("webhook timestamp is too old", param="webhook-timestamp")
    if sent_at - now > tolerance_s:
        raise WebhookSignatureError("webhook timestamp is too new", param="webhook-timestamp")
    expected = sign(secret, webhook_id, timestamp, body)[3:]
    for part in signatures.split():
        version, _, value = part.partition(",")
        if version == "v1" and hmac.compare_digest(expected.encode(), value.encode()):
            return webhook_id
    raise WebhookSignatureError("the webhook signature does not match",
                                param="webhook-signature")


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """A ``realtime.call.incoming`` event.

    Attributes:
        event_id: the event's ``id`` (``evt_…``).
        call_id: ``data.call_id``, what accept, reject, refer and hangup name.
        sip_headers: ``data.sip_headers`` as ``(name, value)`` pairs, in order
            (untrusted call metadata).
    """

    event_id: str
    call_id: str
    sip_headers: tuple[tuple[str, str], ...]


def parse_incoming(body: bytes) -> IncomingCall | str:
    """The incoming call of a (verified) delivery body, or the event's
    ``type`` when it is another event (acknowledged, nothing done).

    Raises:
        InvalidRequest: not a JSON object, or a ``realtime.call.incoming``
            without a string ``data.call_id``.
    """
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the webhook body is not JSON: {exc}", code="invalid_json") from exc
    if not isinstance(event, dict):
        raise InvalidRequest("the webhook body is not a JSON object", code="invalid_json")
    etype = event.get("type")
    if etype != CALL_INCOMING:
        return etype if isinstance(etype, str) else ""
    data = event.get("data")
    data = data if isinstance(data, dict) else {}
    call_id = data.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest("realtime.call.incoming without data.call_id", param="data.call_id")
    headers: list[tuple[str, str]] = []
    for item in data.get("sip_headers") or ():
        if isinstance(item, dict) and isinstance(item.get("name"), str) \
                and isinstance(item.get("value"), str):
            headers.append((item["name"], item["value"]))
    event_id = event.get("id")
    return IncomingCall(event_id if isinstance(event_id, str) else "", call_id, tuple(headers))


# RFC 3261 §7.3.3 compact forms of the headers routes name most
_COMPACT = {"t": "to", "f": "from"}


def header_values(sip_headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    """The values of header ``name`` (names ignore case; ``To``/``t``,
    ``From``/``f`` compact forms too), in order."""
    want = _COMPACT.get(name.lower(), name.lower())
    return [value for key, value in sip_headers if _COMPACT.get(key.lower(), key.lower()) == want]


def normalize_number(number: str) -> str:
    """A phone number without visual separators (spaces, ``-``, ``.``,
    ``(``, ``)``): ``"+1 (800) 555-1212"`` → ``"+18005551212"``."""
    return "".join(ch for ch in number.strip() if ch not in " -.()")


def called_number(sip_headers: Iterable[tuple[str, str]]) -> str | None:
    """The called number: the user part of the first ``To`` header's URI
    (``"Name" <sip:+18005551212@host;…>;tag=…`` → ``+18005551212``;
    ``tel:+1-800-555-1212`` → ``+18005551212``), normalized; None without a
    ``To`` header or a user part."""
    values = header_values(sip_headers, "To")
    if not values:
        return None
    value = values[0].strip()
    if "<" in value and ">" in value:
        value = value[value.index("<") + 1:value.index(">")]
    value = value.split(";", 1)[0].strip()
    scheme, sep, rest = value.partition(":")
    if not sep or scheme.lower() not in ("sip", "sips", "tel"):
        return None
    user = rest.split("@", 1)[0] if scheme.lower() != "tel" else rest
    user = normalize_number(user.split(";", 1)[0])
    return user or None


def route_call(routes: Sequence[SipRouteSettings],
               sip_headers: Sequence[tuple[str, str]]) -> SipRouteSettings | None:
    """The first route matching the call: a ``header`` route when the call
    has that header with exactly ``value`` (surrounding spaces ignored), a
    ``number`` route when the called number (``called_number``) equals its
    normalized ``number``. None when none matches."""
    number = called_number(sip_headers)
    for route in routes:
        if route.header:
            if any(v.strip() == route.value.strip() for v in header_values(sip_headers,
                                                                          route.header)):
                return route
        elif number is not None and normalize_number(route.number) == number:
            return route
    return None


def reject_status(err: VoxgateError) -> int:
    """The SIP status a call refused by admission is rejected with:
    486 Busy Here for the concurrency and request-rate limits (the caller
    may try again), 503 Service Unavailable while voxgate cannot admit
    (draining, database or Redis down), 603 Decline for the rest (quota
    used up, account closed or past due, a model not allowed)."""
    if isinstance(err, (ConcurrencyLimited, RateLimited)):
        return SIP_BUSY_HERE
    if isinstance(err, ServiceUnavailable):
        return SIP_SERVICE_UNAVAILABLE
    if isinstance(err, (QuotaExceeded, PermissionDenied)):
        return SIP_DECLINE
    return SIP_DECLINE


def accept_body(session: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The body of ``POST /v1/realtime/calls/{call_id}/accept``: the route's
    session config with ``type: "realtime"`` and the admitted ``model``
    (both voxgate's, whatever the route says)."""
    return {**session, "type": "realtime", "model": model}


def valid_target_uri(uri: Any) -> bool:
    """A ``refer`` ``target_uri`` OpenAI takes: a ``tel:`` or ``sip:`` (or
    ``sips:``) URI with something after the scheme."""
    if not isinstance(uri, str):
        return False
    scheme, sep, rest = uri.partition(":")
    return bool(sep and rest.strip()) and scheme.lower() in ("tel", "sip", "sips")


class ReportedAudio:
    """The audio of a SIP call as its sideband events report it (the audio
    itself flows on SIP, never through voxgate):

    - caller (in): the speech the provider's turn detection heard: each
      ``input_audio_buffer.speech_started`` ``audio_start_ms`` to the
      following ``input_audio_buffer.speech_stopped`` ``audio_end_ms`` (ms
      of the call's input audio, the provider's own positions); speech
      still going on at the end counts up to the end, by the caller's clock
      (``end``);
    - agent (out): ``response.done`` ``usage.output_token_details.audio_tokens``
      × ``OUTPUT_AUDIO_MS_PER_TOKEN``.

    Input audio tokens are not used for the caller's audio: each response's
    input tokens count the whole conversation again (earlier turns, the
    agent's own audio), cached or not.

    Each method returns the ms to add (in, out); times in ms.
    """

    __slots__ = ("_speech_from", "_speech_at_ms")

    def __init__(self) -> None:
        self._speech_from: float | None = None  # audio_start_ms of speech going on
        self._speech_at_ms = 0.0  # the caller's clock when it started

    def speech_started(self, audio_start_ms: Any, now_ms: float) -> tuple[float, float]:
        if _number(audio_start_ms) is not None and self._speech_from is None:
            self._speech_from = float(audio_start_ms)
            self._speech_at_ms = now_ms
        return 0.0, 0.0

    def speech_stopped(self, audio_end_ms: Any) -> tuple[float, float]:
        start, self._speech_from = self._speech_from, None
        end = _number(audio_end_ms)
        if start is None or end is None:
            return 0.0, 0.0
        return max(0.0, end - start), 0.0

    @staticmethod
    def response_done(output_audio_tokens: int) -> tuple[float, float]:
        return 0.0, max(0, output_audio_tokens) * OUTPUT_AUDIO_MS_PER_TOKEN

    def end(self, now_ms: float) -> tuple[float, float]:
        """The call ended: speech still going on counts up to ``now_ms``."""
        if self._speech_from is None:
            return 0.0, 0.0
        self._speech_from = None
        return max(0.0, now_ms - self._speech_at_ms), 0.0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
