"""Event handling both relays (WebSocket and WebRTC) share: the one check of
client events on their way upstream, the ephemeral key's session config
applied before the client's ``session.created`` (:class:`KeySession`), and
the customer's own ``rate_limits.updated`` (:func:`rate_limits_event`).

A client event is relayed when it is a JSON object with a well-formed
``type`` (dotted lowercase words, as OpenAI names them), within the size
limit, and, for ``input_audio_buffer.append``, with valid base64 ``audio``;
anything else is answered with an ``error`` event
(https://platform.openai.com/docs/api-reference/realtime-server-events/error)
and not relayed, so the meter counts only real audio. A well-formed type
voxgate does not know (``voxgate.models.realtime.CLIENT_EVENTS``), such as
one OpenAI adds tomorrow, is relayed for the provider to answer and counted
as ``other``.
"""

from __future__ import annotations

import binascii
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from voxgate.errors import MalformedEvent, MessageTooLarge, new_event_id
from voxgate.metering.events import AUDIO_APPEND
from voxgate.metering.rate import plan_rate_limits
from voxgate.models.realtime import CLIENT_EVENTS
from voxgate.store.base import period_of

__all__ = ["parse_client_event", "valid_base64", "utf8_len", "AUDIO_APPEND",
           "OTHER", "pin_session_model", "KeySession", "Delivery", "rate_limits_event",
           "RATE_LIMITS", "customer_rate_limits"]

if TYPE_CHECKING:
    from voxgate.proxy.gateway import ActiveSession, Gateway

log = logging.getLogger("voxgate.relay")

RATE_LIMITS = "rate_limits.updated"

OTHER = "other"  # what the meter counts a relayed event of an unknown type as
_WELL_FORMED_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


def valid_base64(s: str) -> bool:
    """Strict base64 (RFC 4648 §4, padded) check."""
    if len(s) % 4:
        return False
    try:
        binascii.a2b_base64(s, strict_mode=True)
    except (binascii.Error, ValueError):
        return False
    return True


def utf8_len(text: str | bytes) -> int:
    """Size in bytes of a message as sent on the wire (UTF-8). O(1) for the
    usual all-ASCII JSON (``str.isascii`` reads a flag); encodes otherwise."""
    if isinstance(text, bytes) or text.isascii():
        return len(text)
    return len(text.encode())


def parse_client_event(data: str | bytes, max_bytes: int) -> tuple[dict[str, Any], str]:
    """Validate a client event before it is relayed upstream (WebSocket
    relay and the WebRTC ``oai-events`` data channel alike).

    Returns:
        (event, type); the type is ``OTHER`` for a well-formed type voxgate
        does not know (``voxgate.metering.events.classify`` takes both).

    Raises:
        MessageTooLarge, MalformedEvent (binary, bad JSON, no ``type``, a
        ``type`` that is not dotted lowercase words (``invalid_event``),
        invalid base64 audio).
    """
    n = len(data)
    if n > max_bytes:
        raise MessageTooLarge(f"message of {n} bytes exceeds the limit of {max_bytes} bytes")
    if isinstance(data, bytes):
        raise MalformedEvent("binary messages are not supported; send JSON text events",
                             code="invalid_event")
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"invalid JSON: {exc}", code="invalid_json") from exc
    etype = event.get("type") if isinstance(event, dict) else None
    if not isinstance(etype, str):
        raise MalformedEvent("event must be a JSON object with a string 'type'",
                             code="invalid_event", param="type")
    event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
    if etype == AUDIO_APPEND:
        audio = event.get("audio")
        if not isinstance(audio, str) or not valid_base64(audio):
            raise MalformedEvent("input_audio_buffer.append 'audio' must be base64-encoded audio",
                                 code="invalid_base64", param="audio", event_id=event_id)
    elif etype not in CLIENT_EVENTS:
        if len(etype) > 64 or not _WELL_FORMED_TYPE.fullmatch(etype):
            raise MalformedEvent(f"invalid event type {etype[:64]!r}: expected dotted lowercase "
                                 "words such as 'response.create'", code="invalid_event",
                                 param="type", event_id=event_id)
        return event, OTHER
    return event, etype


def pin_session_model(event: dict[str, Any], model: str) -> dict[str, Any] | None:
    """A client ``session.update`` that names another model than the
    session's (pinned at admission: the key's, the project's or the
    operator's choice) → the same event without ``session.model``, so the
    pin cannot be bypassed mid-session (clients such as the Agents SDK send
    their own default model in every update). None when there is nothing to
    change."""
    if event.get("type") != "session.update":
        return None
    session = event.get("session")
    if not isinstance(session, dict) or "model" not in session or session["model"] == model:
        return None
    return {**event, "session": {k: v for k, v in session.items() if k != "model"}}


Delivery = tuple[str, dict[str, Any] | None, str]
"""An upstream event to deliver to the client: (type, parsed event, JSON text)."""


class KeySession:
    """Applies an ephemeral key's session config so that the client's first
    event, ``session.created``, already carries it, as OpenAI's does for a
    key minted with a session
    (https://platform.openai.com/docs/api-reference/realtime-sessions/create-realtime-client-secret).

    The relay sends :attr:`update` (a ``session.update`` with the config)
    upstream before any client event, then passes every upstream event
    through :meth:`upstream` while :attr:`pending`: the upstream
    ``session.created`` is held until the ``session.updated`` answering the
    update, and the client gets one ``session.created`` (the upstream's
    ``event_id``, the session object of that ``session.updated``: the
    upstream's id, the key's config applied); that ``session.updated`` is not
    relayed. If the provider answers the update with an ``error`` instead,
    the held ``session.created`` goes out as it was, then the error. Other
    events arriving meanwhile are held and follow, in order. Works with any
    upstream that answers ``session.update`` as the GA reference says (the
    local provider and OpenAI). Sans-I/O.

    Args:
        session: the session config to apply (None or empty: nothing to do).
    """

    __slots__ = ("update", "pending", "_event_id", "_created", "_held")

    def __init__(self, session: dict[str, Any] | None) -> None:
        self._event_id = "evt_vg_" + uuid.uuid4().hex[:20]
        self.pending = bool(session)
        self.update: str | None = orjson.dumps(
            {"type": "session.update", "event_id": self._event_id, "session": session}
        ).decode() if session else None
        self._created: dict[str, Any] | None = None
        self._held: list[Delivery] = []

    def upstream(self, etype: str, event: dict[str, Any] | None, data: str) -> list[Delivery]:
        """What to deliver to the client now for this upstream event, while
        :attr:`pending` (afterwards the relay delivers events as they come)."""
        if self._created is None:
            if etype == "session.created" and event is not None:
                self._created = event
                return []
            return [(etype, event, data)]  # before session.created: as it comes
        if etype == "session.updated" and event is not None:
            created = {"type": "session.created", "event_id": self._created.get("event_id"),
                       "session": event.get("session")}
            return self._release(("session.created", created, orjson.dumps(created).decode()))
        if etype == "error" and event is not None and _error_event_id(event) == self._event_id:
            raw = self._created
            return self._release(("session.created", raw, orjson.dumps(raw).decode()),
                                 (etype, event, data))
        self._held.append((etype, event, data))
        return []

    def _release(self, *first: Delivery) -> list[Delivery]:
        self.pending = False
        held, self._held = self._held, []
        return [*first, *held]


def _error_event_id(event: dict[str, Any]) -> Any:
    err = event.get("error")
    return err.get("event_id") if isinstance(err, dict) else None


def rate_limits_event(limits: list[dict[str, Any]]) -> str:
    """A GA ``rate_limits.updated`` event carrying ``limits``
    (``voxgate.metering.rate.plan_rate_limits``), as JSON text."""
    return orjson.dumps({"type": "rate_limits.updated", "event_id": new_event_id(),
                         "rate_limits": limits}).decode()


async def customer_rate_limits(gw: Gateway, active: ActiveSession) -> str | None:
    """The session's customer's ``rate_limits.updated`` now (their plan's
    figures, ``plan_rate_limits``): the key's request budget peeked (nothing
    counted), the account's billable sessions this period and sessions in
    progress, from admission's counters in one call
    (``Admission.rate_limit_figures``: one Redis round trip, from memory
    in-process; the store is read only to seed a period admission does not
    hold yet); the first (after ``session.created``) shows the figures
    admission returned when it admitted the session (``ActiveSession.admitted``),
    with no call at all. None, logged, when admission or the store cannot answer (the
    session goes on without it)."""
    principal, plan = active.principal, active.plan
    account_id, now_s = principal.account.id, time.time()
    if active.admitted is not None:  # the first: as admission left them a moment ago
        (rate, usage), active.admitted = active.admitted, None
        return rate_limits_event(plan_rate_limits(plan, rate, usage.billable_used,
                                                  usage.in_flight, now_s))
    period = period_of(now_s)
    try:
        rate, usage = await gw.admission.rate_limit_figures(
            principal.rate_key, plan, account_id, period, gw._seed(account_id, period),
            time.monotonic())
    except Exception as exc:  # noqa: BLE001 - a missing figure must not end the session
        log.warning("session %s: no rate_limits.updated: %s: %s", active.record.id,
                    type(exc).__name__, exc)
        return None
    return rate_limits_event(plan_rate_limits(plan, rate, usage.billable_used, usage.in_flight,
                                              now_s))
