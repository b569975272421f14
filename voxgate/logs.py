"""Log lines operators can ship: request context on every record, keys
never written, one JSON object per line when ``log_format = "json"``.

- **Context.** ``bind(request_id=…, account_id=…, project_id=…,
  session_id=…)`` adds fields to the current context (a ``ContextVar``:
  aiohttp runs each request in its own task, so they stay with that request
  and the tasks it starts). Every ``LogRecord`` created afterwards in that
  context carries them as attributes; the JSON format writes them, the text
  format appends them as ``key=value``.
- **Redaction.** Project keys (``vg_live_…``), admin keys (``vg_admin_…``)
  and ephemeral keys (``ek_…``) are replaced by their prefix and ``****`` in
  the message of every record when it is created, whichever library logs it
  (aiohttp's access log and its WebSocket warnings included), and again in
  the formatted line (tracebacks). ``redact`` is the rule.
- **Format.** ``configure(fmt, level)`` sets the formatter of the root
  handlers: ``text`` (``%(asctime)s %(levelname)s %(name)s: %(message)s``)
  or ``json`` (python-json-logger: ``time`` in ISO 8601 UTC, ``level``,
  ``logger``, ``message``, the context fields that are known and any
  ``extra``, such as aiohttp's access-log fields).
"""

from __future__ import annotations

import contextvars
import getpass
import logging
import re
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

__all__ = ["cli_actor", "bind", "context", "redact", "install", "configure", "CONTEXT_FIELDS", "TextFormatter",
           "VoxgateJsonFormatter"]

CONTEXT_FIELDS = ("request_id", "session_id", "account_id", "project_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_CONTEXT: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "voxgate_log_context", default=None)

# the key prefixes of voxgate.models.accounts, then the key's url-safe characters
_KEY = re.compile(r"\b(vg_live_|vg_admin_|ek_)[A-Za-z0-9_\-]{8,}")
_MARKERS = ("vg_live_", "vg_admin_", "ek_")


def redact(text: str) -> str:
    """``text`` with every voxgate key replaced by ``<prefix>****``."""
    if not any(m in text for m in _MARKERS):
        return text
    return _KEY.sub(lambda m: m.group(1) + "****", text)


def bind(**fields: str | None) -> None:
    """Add ``fields`` (None values are skipped) to the log context of the
    current task and the tasks it starts from now on."""
    current = _CONTEXT.get() or {}
    new = {k: v for k, v in fields.items() if v is not None}
    if new:
        _CONTEXT.set({**current, **new})


def context() -> dict[str, str]:
    """The log context fields bound so far in this context."""
    return dict(_CONTEXT.get() or {})


_installed = False


def install() -> None:
    """Wrap the log-record factory once per process: context fields onto
    every record, keys out of every message. Idempotent."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the caller's; keep the record
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        for key, value in (_CONTEXT.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


class TextFormatter(logging.Formatter):
    """The text line, with the known context fields appended as ``key=value``
    (those the message does not already carry, as the access log line does
    its ``request_id``) and keys redacted from the whole line (tracebacks
    included)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        message = record.getMessage()
        extra = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS
                         if hasattr(record, k) and f"{k}=" not in message)
        return redact(f"{line} {extra}" if extra else line)


class VoxgateJsonFormatter(JsonFormatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``,
    the known context fields and any ``extra``; keys redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """ISO 8601 in UTC, to the millisecond: ``2026-12-01T22:20:46.113+00:00``."""
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(fmt: str = "text", level: str | int | None = None) -> None:
    """Install the record factory and give every root handler the ``fmt``
    formatter (``text`` or ``json``); add a stderr handler when the root
    logger has none.

    Raises:
        ValueError: ``fmt`` is neither ``text`` nor ``json``.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log_format must be 'text' or 'json', not {fmt!r}")
    install()
    root = logging.getLogger()
    if level is not None:
        root.setLevel(level)
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    formatter: logging.Formatter = VoxgateJsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT)
    for handler in root.handlers:
        if type(handler).__module__.startswith("_pytest"):
            continue  # pytest's capture handlers keep their own format
        handler.setFormatter(formatter)


def cli_actor() -> str:
    """The audit log's actor for a command run by hand: ``cli:<user>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"
