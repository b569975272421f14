"""The one check of server events in the voice tests: every event the
provider sends must validate against the ``openai`` SDK's
``RealtimeServerEvent`` union (types, required fields) with no field the
SDK does not know, except those OpenAI itself sends (:data:`KNOWN_EXTRAS`)."""

from __future__ import annotations

from typing import Any

import orjson
import pydantic
from openai.types.realtime import RealtimeServerEvent

__all__ = ["KNOWN_EXTRAS", "validated"]

_SERVER_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RealtimeServerEvent)

# Fields OpenAI sends that the SDK's session model does not declare.
KNOWN_EXTRAS = {".session": {"id", "object", "expires_at"}}


def _no_extras(model: Any, path: str = "") -> None:
    if isinstance(model, pydantic.BaseModel):
        extra = set(model.model_extra or ()) - KNOWN_EXTRAS.get(path, set())
        assert not extra, f"unknown fields at {path or 'event'}: {sorted(extra)}"
        for name in type(model).model_fields:
            _no_extras(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list):
        for i, v in enumerate(model):
            _no_extras(v, f"{path}[{i}]")


def validated(raw: bytes | str) -> dict[str, Any]:
    """One server event as a dict, after checking it against the SDK's
    ``RealtimeServerEvent`` union (types, required fields, no extras)."""
    event = orjson.loads(raw)
    model = _SERVER_EVENT.validate_python(event)
    _no_extras(model)
    return event
