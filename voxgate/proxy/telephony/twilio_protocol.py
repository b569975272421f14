"""Twilio Media Streams, sans-I/O: the messages of a bidirectional stream,
their validation, the played-audio tracker behind barge-in, and Twilio's
request-validation signature.

Follows Twilio's "Media Streams – WebSocket messages"
(https://www.twilio.com/docs/voice/media-streams/websocket-messages) and
"Webhooks security" (https://www.twilio.com/docs/usage/webhooks/webhooks-security).
Nothing here touches a socket or reads a clock; the shell
(``voxgate.proxy.telephony.twilio``) feeds it frames and sends what it builds.

Twilio → server (every frame one JSON text message; ``sequenceNumber`` and
``chunk`` are decimal strings, ``timestamp`` ms since the stream started)::

    connected  {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start      {"event": "start", "sequenceNumber", "streamSid", "start": {"streamSid",
                "accountSid", "callSid", "tracks", "customParameters", "mediaFormat":
                {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
    media      {"event": "media", "sequenceNumber", "streamSid", "media": {"track",
                "chunk", "timestamp", "payload"}}      (payload: base64 μ-law)
    dtmf       {"event": "dtmf", "sequenceNumber", "streamSid", "dtmf": {"track", "digit"}}
    mark       {"event": "mark", "sequenceNumber", "streamSid", "mark": {"name"}}
    stop       {"event": "stop", "sequenceNumber", "streamSid", "stop": {"accountSid",
                "callSid"}}

Server → Twilio (exactly these fields; Twilio rejects extra ones)::

    media      {"event": "media", "streamSid", "media": {"payload"}}
    mark       {"event": "mark", "streamSid", "mark": {"name"}}
    clear      {"event": "clear", "streamSid"}

Errors: :class:`TwilioProtocolError` (``code`` a short snake_case word, the
message a lowercase fact), raised by :func:`parse_message` and
:meth:`StreamState.receive`; the shell closes the stream with its
``close_code`` and the message as the close reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

__all__ = [
    "MULAW_BYTES_PER_MS",
    "MULAW_ENCODING",
    "TwilioProtocolError",
    "Connected",
    "Start",
    "Media",
    "Dtmf",
    "Mark",
    "Stop",
    "TwilioMessage",
    "parse_message",
    "StreamState",
    "media_message",
    "mark_message",
    "clear_message",
    "PlaybackTracker",
    "Truncation",
    "compute_signature",
    "signature_valid",
    "url_variants",
    "bearer_from_parameters",
    "CLOSE_UNSUPPORTED_DATA",
    "CLOSE_POLICY",
]

MULAW_ENCODING = "audio/x-mulaw"
MULAW_RATE = 8000
MULAW_BYTES_PER_MS = 8.0
"""G.711 μ-law at 8 kHz mono: one byte per sample, 8 bytes per ms."""
# RFC 6455 §7.4.1
CLOSE_UNSUPPORTED_DATA = 1003
"""Close code for a binary frame (the stream carries JSON text only)."""
CLOSE_POLICY = 1008
"""Close code for any other protocol violation, and for refused calls."""


class TwilioProtocolError(Exception):
    """A frame that breaks the Media Streams protocol.

    Attributes:
        code: ``binary_frame``, ``invalid_json``, ``unknown_event``,
            ``missing_field``, ``invalid_field``, ``not_started``,
            ``already_started``, ``wrong_stream_sid``, ``invalid_base64``,
            ``unsupported_media_format``.
        close_code: the WebSocket close code to end the stream with.
    """

    def __init__(self, message: str, code: str, close_code: int = CLOSE_POLICY) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.close_code = close_code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# ---------------------------------------------------------------- typed messages


@dataclass(frozen=True, slots=True)
class Connected:
    """``connected``: the first message, naming the protocol."""

    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    """``start``: the stream's metadata.

    Attributes:
        custom_parameters: the TwiML ``<Parameter>`` name → value pairs.
        media_format: ``{"encoding", "sampleRate", "channels"}``.
    """

    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str]
    media_format: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Media:
    """``media``: one chunk of the caller's audio.

    Attributes:
        timestamp_ms: ms since the stream started.
        payload: the base64 μ-law text as received (validated, not decoded).
        audio_bytes: the decoded payload's size, bytes (= samples at 8 kHz).
    """

    sequence_number: int
    stream_sid: str
    track: str
    chunk: int
    timestamp_ms: int
    payload: str
    audio_bytes: int


@dataclass(frozen=True, slots=True)
class Dtmf:
    """``dtmf``: a key the caller pressed (``0``–``9``, ``*``, ``#``)."""

    sequence_number: int
    stream_sid: str
    track: str
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    """``mark``: the audio sent before the mark of this name has played (or
    was cleared)."""

    sequence_number: int
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    """``stop``: the stream ended (the call hung up, or ``<Connect>`` left)."""

    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str


TwilioMessage = Connected | Start | Media | Dtmf | Mark | Stop


def _field(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in obj:
        raise TwilioProtocolError(f"{where} has no {name!r}", "missing_field")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TwilioProtocolError(f"{where} field {name!r} has the wrong type", "invalid_field")
    return value


def _number(obj: Mapping[str, Any], name: str, where: str) -> int:
    """A numeric field: a decimal string as Twilio sends ``sequenceNumber``
    and ``chunk``, or a JSON number (``timestamp`` arrives either way)."""
    value = _field(obj, name, (str, int), where)
    if isinstance(value, int):
        if value < 0:
            raise TwilioProtocolError(f"{where} field {name!r} is negative", "invalid_field")
        return value
    if not value.isdecimal() or len(value) > 18:
        raise TwilioProtocolError(f"{where} field {name!r} is not a decimal number",
                                  "invalid_field")
    return int(value)


def _object(obj: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    return _field(obj, name, dict, where)  # type: ignore[no-any-return]


def _b64_payload(payload: str) -> int:
    """The decoded size of a strict base64 string (RFC 4648 §4, padded).

    Raises:
        TwilioProtocolError: ``invalid_base64``.
    """
    if len(payload) % 4:
        raise TwilioProtocolError("media payload is not valid base64", "invalid_base64")
    try:
        return len(binascii.a2b_base64(payload, strict_mode=True))
    except (binascii.Error, ValueError):
        raise TwilioProtocolError("media payload is not valid base64", "invalid_base64") from None


def parse_message(data: str | bytes) -> TwilioMessage:
    """Parse one frame from Twilio.

    Args:
        data: the frame: ``str`` for a text frame, ``bytes`` for a binary one.

    Raises:
        TwilioProtocolError: a binary frame (``binary_frame``, close 1003),
            bad JSON, an unknown ``event``, a missing field or one of the
            wrong type, an invalid base64 ``payload``.
    """
    if isinstance(data, bytes):
        raise TwilioProtocolError("binary frames are not part of the media streams protocol; "
                                  "every message is JSON text", "binary_frame",
                                  CLOSE_UNSUPPORTED_DATA)
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise TwilioProtocolError("message is not valid JSON", "invalid_json") from None
    if not isinstance(msg, dict):
        raise TwilioProtocolError("message is not a JSON object", "invalid_json")
    event = msg.get("event")
    if not isinstance(event, str):
        raise TwilioProtocolError("message has no string 'event'", "missing_field")
    if event == "connected":
        return Connected(_field(msg, "protocol", str, "connected"),
                         _field(msg, "version", str, "connected"))
    parse: Callable[[dict[str, Any], int, str], TwilioMessage] | None = _PARSERS.get(event)
    if parse is None:
        raise TwilioProtocolError(f"unknown event {event[:40]!r}", "unknown_event")
    seq = _number(msg, "sequenceNumber", event)
    sid = _field(msg, "streamSid", str, event)
    return parse(msg, seq, sid)


def _start(msg: dict[str, Any], seq: int, sid: str) -> Start:
    body = _object(msg, "start", "start")
    inner_sid = _field(body, "streamSid", str, "start")
    if inner_sid != sid:
        raise TwilioProtocolError("start.streamSid differs from the message's streamSid",
                                  "wrong_stream_sid")
    tracks = _field(body, "tracks", list, "start")
    if not all(isinstance(t, str) for t in tracks):
        raise TwilioProtocolError("start field 'tracks' must list strings", "invalid_field")
    params = body.get("customParameters") or {}
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise TwilioProtocolError("start field 'customParameters' must map names to strings",
                                  "invalid_field")
    fmt = _object(body, "mediaFormat", "start")
    return Start(seq, sid, _field(body, "accountSid", str, "start"),
                 _field(body, "callSid", str, "start"), tuple(tracks), dict(params), dict(fmt))


def _media(msg: dict[str, Any], seq: int, sid: str) -> Media:
    body = _object(msg, "media", "media")
    payload = _field(body, "payload", str, "media")
    return Media(seq, sid, _field(body, "track", str, "media"), _number(body, "chunk", "media"),
                 _number(body, "timestamp", "media"), payload, _b64_payload(payload))


def _dtmf(msg: dict[str, Any], seq: int, sid: str) -> Dtmf:
    body = _object(msg, "dtmf", "dtmf")
    digit = _field(body, "digit", str, "dtmf")
    if len(digit) != 1 or digit not in "0123456789*#ABCD":
        raise TwilioProtocolError(f"dtmf digit {digit[:8]!r} is not a DTMF key", "invalid_field")
    return Dtmf(seq, sid, str(body.get("track", "inbound_track")), digit)


def _mark(msg: dict[str, Any], seq: int, sid: str) -> Mark:
    body = _object(msg, "mark", "mark")
    return Mark(seq, sid, _field(body, "name", str, "mark"))


def _stop(msg: dict[str, Any], seq: int, sid: str) -> Stop:
    body = msg.get("stop")
    body = body if isinstance(body, dict) else {}
    return Stop(seq, sid, str(body.get("accountSid", "")), str(body.get("callSid", "")))


_PARSERS: dict[str, Callable[[dict[str, Any], int, str], TwilioMessage]] = {
    "start": _start, "media": _media, "dtmf": _dtmf, "mark": _mark, "stop": _stop}


# ---------------------------------------------------------------- the stream's state


@dataclass(slots=True)
class StreamState:
    """The order of a stream's messages: ``connected`` (optional) first,
    then one ``start``, then ``media``/``dtmf``/``mark`` of that
    ``streamSid`` until ``stop``. Sans-I/O: :meth:`receive` parses and
    checks one frame and returns it.

    Attributes:
        start: the ``start`` message once received.
        stopped: a ``stop`` was received.
    """

    start: Start | None = None
    stopped: bool = False
    last_sequence: int = 0

    @property
    def stream_sid(self) -> str | None:
        return self.start.stream_sid if self.start is not None else None

    def receive(self, data: str | bytes) -> TwilioMessage:
        """Parse one frame (:func:`parse_message`) and check it against the
        stream so far.

        Raises:
            TwilioProtocolError: what :func:`parse_message` raises; a
                ``start`` whose ``mediaFormat`` is not μ-law 8 kHz mono
                (``unsupported_media_format``); a second ``start``
                (``already_started``); ``media``, ``dtmf``, ``mark`` or
                ``stop`` before ``start`` (``not_started``) or of another
                stream (``wrong_stream_sid``); anything after ``stop``.
        """
        msg = parse_message(data)
        if isinstance(msg, Connected):
            if self.start is not None:
                raise TwilioProtocolError("connected after start", "already_started")
            return msg
        if self.stopped:
            raise TwilioProtocolError("message after stop", "not_started")
        if isinstance(msg, Start):
            if self.start is not None:
                raise TwilioProtocolError("a second start on one stream", "already_started")
            fmt = msg.media_format
            if (fmt.get("encoding") != MULAW_ENCODING or fmt.get("sampleRate") != MULAW_RATE
                    or fmt.get("channels") != 1):
                raise TwilioProtocolError(
                    f"mediaFormat must be audio/x-mulaw, 8000 Hz, 1 channel (got {fmt})"[:120],
                    "unsupported_media_format")
            self.start = msg
        elif self.start is None:
            raise TwilioProtocolError(f"{_event_name(msg)} before start", "not_started")
        elif msg.stream_sid != self.start.stream_sid:
            raise TwilioProtocolError(f"{_event_name(msg)} for another streamSid "
                                      f"({msg.stream_sid[:40]!r})", "wrong_stream_sid")
        if isinstance(msg, Stop):
            self.stopped = True
        self.last_sequence = max(self.last_sequence, msg.sequence_number)
        return msg


def _event_name(msg: TwilioMessage) -> str:
    return type(msg).__name__.lower()


# ---------------------------------------------------------------- server → Twilio


def media_message(stream_sid: str, payload_b64: str) -> str:
    """``media``: base64 μ-law 8 kHz audio to play, queued in order."""
    return orjson.dumps({"event": "media", "streamSid": stream_sid,
                         "media": {"payload": payload_b64}}).decode()


def mark_message(stream_sid: str, name: str) -> str:
    """``mark``: echoed by Twilio when the audio sent before it has played."""
    return orjson.dumps({"event": "mark", "streamSid": stream_sid,
                         "mark": {"name": name}}).decode()


def clear_message(stream_sid: str) -> str:
    """``clear``: drop the audio queued but not yet played (pending marks
    are echoed)."""
    return orjson.dumps({"event": "clear", "streamSid": stream_sid}).decode()


# ---------------------------------------------------------------- played audio


@dataclass(frozen=True, slots=True)
class Truncation:
    """What a barge-in truncates: the assistant item whose audio was
    playing and the audio of it actually played, in ms (an integer, as
    ``conversation.item.truncate`` takes it)."""

    item_id: str
    audio_end_ms: int


@dataclass(slots=True)
class _Item:
    sent_bytes: int = 0
    played_bytes: int = 0


@dataclass(slots=True)
class PlaybackTracker:
    """What the caller has heard of each assistant item's audio, from the
    marks Twilio echoed.

    The shell sends each output chunk as ``media`` then a ``mark`` named by
    :meth:`sent`; Twilio echoes a mark when playback reaches it, in order,
    so :meth:`echoed` counts the chunks up to that mark as played. On
    barge-in :meth:`clear` names the item whose audio was still queued and
    how much of it played, and forgets the marks pending: Twilio echoes
    them after a ``clear`` although their audio never played.
    Sizes are μ-law bytes (8 per ms).
    """

    _items: dict[str, _Item] = field(default_factory=dict)
    _pending: deque[tuple[str, str, int]] = field(default_factory=deque)  # (mark, item, bytes)
    _next: int = 0
    last_item: str | None = None

    def sent(self, item_id: str, nbytes: int) -> str:
        """One chunk of ``item_id``'s audio (``nbytes`` μ-law bytes) was sent
        to Twilio; returns the name of the mark to send after it."""
        self._next += 1
        name = f"vg{self._next}"
        self._items.setdefault(item_id, _Item()).sent_bytes += nbytes
        self._pending.append((name, item_id, nbytes))
        self.last_item = item_id
        return name

    def echoed(self, name: str) -> bool:
        """Twilio echoed mark ``name``: its chunk and every chunk before it
        have played. False for a name not pending (cleared, or not ours)."""
        if not any(p[0] == name for p in self._pending):
            return False
        while self._pending:
            mark, item_id, nbytes = self._pending.popleft()
            self._items[item_id].played_bytes += nbytes
            if mark == name:
                break
        return True

    def played_ms(self, item_id: str) -> float:
        """Audio of ``item_id`` played so far, ms."""
        item = self._items.get(item_id)
        return item.played_bytes / MULAW_BYTES_PER_MS if item else 0.0

    def sent_ms(self, item_id: str) -> float:
        """Audio of ``item_id`` sent to Twilio so far, ms."""
        item = self._items.get(item_id)
        return item.sent_bytes / MULAW_BYTES_PER_MS if item else 0.0

    @property
    def playing(self) -> bool:
        """Whether audio sent to Twilio has not played yet (marks pending)."""
        return bool(self._pending)

    def clear(self) -> Truncation | None:
        """Barge-in: the caller spoke. Returns the item whose audio was still
        queued (the latest with marks pending) and the audio of it played,
        or None when everything sent has played (nothing to clear). Pending
        marks are forgotten either way."""
        if not self._pending:
            return None
        item_id = self._pending[-1][1]
        self._pending.clear()
        return Truncation(item_id, int(self.played_ms(item_id)))


# ---------------------------------------------------------------- request validation


def compute_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """Twilio's request signature: HMAC-SHA1 keyed with the account's auth
    token over the full URL followed by each POST parameter's name and
    value, sorted by name, base64-encoded
    (https://www.twilio.com/docs/usage/webhooks/webhooks-security). A
    WebSocket upgrade is a GET: no parameters, the URL with its query."""
    data = url + "".join(k + v for k, v in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def url_variants(url: str) -> list[str]:
    """``url`` as given and with its default port added or removed, as
    Twilio's own validators try both (a proxy may add or strip ``:443``)."""
    parts = urlsplit(url)
    default = {"https": 443, "wss": 443, "http": 80, "ws": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    variants = [url]
    if default is not None:
        if parts.port is None:
            variants.append(urlunsplit(parts._replace(netloc=f"{host}:{default}")))
        elif parts.port == default:
            variants.append(urlunsplit(parts._replace(netloc=host)))
    return variants


def signature_valid(auth_token: str, urls: list[str], signature: str | None,
                    params: Mapping[str, str] | None = None) -> bool:
    """Whether ``signature`` (the ``X-Twilio-Signature`` header) is Twilio's
    for one of ``urls`` (each with and without its default port), compared
    in constant time. False when there is no signature."""
    if not signature:
        return False
    for url in urls:
        for variant in url_variants(url):
            if hmac.compare_digest(compute_signature(auth_token, variant, params), signature):
                return True
    return False


def bearer_from_parameters(params: Mapping[str, str]) -> str | None:
    """The key of ``customParameters.authorization`` (``Bearer <key>``; the
    name matched ignoring case), or None when absent or empty."""
    value = next((v for k, v in params.items() if k.lower() == "authorization"), None)
    if value is None:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() == "bearer":
        value = rest
    return value.strip() or None
