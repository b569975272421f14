"""Conversation items and ``response.create`` parameters of the local
provider: parsing and validation, pure code, no I/O.

Shapes follow the GA Realtime reference
(https://platform.openai.com/docs/api-reference/realtime-client-events/conversation/item/create
and .../response/create) and the ``openai`` SDK's ``ConversationItem`` /
``RealtimeResponseCreateParams`` models. Stored items are dicts in the
server's item shape (``"object": "realtime.item"``); keys starting with
``_`` are voxgate's bookkeeping (``_audio_ms``: audio length in ms,
``_segments``: ``(start_ms, duration_ms, text)`` of each spoken sentence),
removed by :func:`public`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voxgate.errors import MalformedEvent
from voxgate.voice.ids import new_id
from voxgate.voice.tools import function_tools

__all__ = ["ResponseParams", "parse_item", "parse_response_params", "validate_tools", "validate_tool_choice",
           "public", "item_text", "truncate_segments"]


def _invalid(message: str, param: str) -> MalformedEvent:
    return MalformedEvent(message, code="invalid_value", param=param)


def public(item: dict[str, Any]) -> dict[str, Any]:
    """An item without voxgate's private bookkeeping keys."""
    return {k: v for k, v in item.items() if not k.startswith("_")}


def item_text(item: dict[str, Any]) -> str:
    """The words of a message item (text parts and transcripts), joined."""
    return " ".join((p.get("text") or p.get("transcript") or "") for p in item.get("content", [])).strip()


def parse_item(item: Any, param: str, to_pcm: Callable[[Any, str], bytes]) -> tuple[dict[str, Any], bytes | None]:
    """A client item (``conversation.item.create`` / ``response.input``) as
    the stored item, plus the PCM16 of its ``input_audio`` parts (None when
    there are none). ``to_pcm(b64, param)`` decodes one audio part.

    Accepted: ``message`` (roles user, assistant, system), ``function_call``
    (``call_id``, ``name``, ``arguments``) and ``function_call_output``
    (``call_id``, ``output``).

    Raises:
        MalformedEvent: ``invalid_value`` / ``missing_required_parameter``
            with ``param`` naming the field.
    """
    if not isinstance(item, dict):
        raise MalformedEvent(f"Missing required parameter: '{param}'.", code="missing_required_parameter",
                             param=param)
    kind = item.get("type", "message")
    given_id = item.get("id")
    item_id: str = given_id if isinstance(given_id, str) and given_id else new_id("item")
    if kind == "function_call_output":
        for key in ("call_id", "output"):
            if not isinstance(item.get(key), str):
                raise MalformedEvent(f"Missing required parameter: '{param}.{key}'.",
                                     code="missing_required_parameter", param=f"{param}.{key}")
        return {"id": item_id, "object": "realtime.item", "type": "function_call_output", "status": "completed",
                "call_id": item["call_id"], "output": item["output"]}, None
    if kind == "function_call":
        for key in ("name", "arguments"):
            if not isinstance(item.get(key), str):
                raise MalformedEvent(f"Missing required parameter: '{param}.{key}'.",
                                     code="missing_required_parameter", param=f"{param}.{key}")
        call_id = item.get("call_id") if isinstance(item.get("call_id"), str) else new_id("call")
        return {"id": item_id, "object": "realtime.item", "type": "function_call", "status": "completed",
                "call_id": call_id, "name": item["name"], "arguments": item["arguments"]}, None
    role = item.get("role")
    content = item.get("content", [])
    if kind != "message" or role not in ("user", "assistant", "system") or not isinstance(content, list):
        raise _invalid(f"Invalid '{param}': expected a message with role user, assistant or system and a "
                       "content array, a function_call or a function_call_output.", param)
    parts: list[dict[str, Any]] = []
    audio: list[bytes] = []
    for i, part in enumerate(content):
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype in ("input_text", "text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise _invalid("Invalid type for 'text': expected a string.", f"{param}.content[{i}].text")
            parts.append({"type": ptype, "text": part["text"]})
        elif ptype == "input_audio":
            audio.append(to_pcm(part.get("audio"), f"{param}.content[{i}].audio"))
            parts.append({"type": "input_audio", "transcript": part.get("transcript")
                          if isinstance(part.get("transcript"), str) else None})
        elif ptype == "output_audio" and role == "assistant":
            parts.append({"type": "output_audio", "transcript": part.get("transcript")
                          if isinstance(part.get("transcript"), str) else ""})
        else:
            raise _invalid(f"Invalid value: {ptype!r} for content type.", f"{param}.content[{i}].type")
    stored = {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed",
              "role": role, "content": parts}
    return stored, (b"".join(audio) if audio else None)


def validate_tools(tools: Any, param: str) -> list[Any]:
    """A ``tools`` array: every entry an object; ``type`` ``function`` ones
    need a non-empty string ``name``.

    Raises:
        MalformedEvent: ``invalid_value``.
    """
    if not isinstance(tools, list):
        raise _invalid(f"Invalid type for '{param}': expected an array.", param)
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _invalid(f"Invalid type for '{param}[{i}]': expected an object.", f"{param}[{i}]")
        if tool.get("type", "function") == "function" and not (isinstance(tool.get("name"), str) and tool["name"]):
            raise MalformedEvent(f"Missing required parameter: '{param}[{i}].name'.",
                                 code="missing_required_parameter", param=f"{param}[{i}].name")
    return tools


def validate_tool_choice(choice: Any, tools: list[Any], param: str) -> Any:
    """``"auto"``, ``"none"``, ``"required"`` or ``{"type": "function",
    "name": N}`` with N among ``tools``.

    Raises:
        MalformedEvent: ``invalid_value``.
    """
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        if choice["name"] not in {t["name"] for t in function_tools(tools)}:
            raise _invalid(f"Tool choice '{choice['name']}' not found in 'tools' parameter.", f"{param}.name")
        return {"type": "function", "name": choice["name"]}
    if isinstance(choice, dict) and choice.get("type") == "mcp":
        return choice
    raise _invalid(f"Invalid value for '{param}': expected 'auto', 'none', 'required' or "
                   "{'type': 'function', 'name': …}.", param)


def _max_tokens(value: Any, param: str) -> int | str:
    if value == "inf" or value is None:
        return "inf"
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise _invalid(f"Invalid value for '{param}': expected an integer from 1 to 4096 or 'inf'.", param)
    return value


@dataclass
class ResponseParams:
    """What one response uses: the session's settings overridden by
    ``response.create``'s ``response`` object. ``input`` is None when the
    default conversation is the context."""

    modalities: list[str]
    instructions: str
    conversation: bool
    tools: list[Any]
    tool_choice: Any
    max_output_tokens: int | str
    metadata: dict[str, str] | None = None
    input: list[dict[str, Any]] | None = None
    input_pcm: dict[str, bytes] = field(default_factory=dict)


def parse_response_params(params: Any, *, modalities: list[str], instructions: str, tools: list[Any],
                          tool_choice: Any, max_output_tokens: Any,
                          items: dict[str, dict[str, Any]],
                          to_pcm: Callable[[Any, str], bytes]) -> ResponseParams:
    """Validate ``response.create``'s ``response`` object against the
    session's defaults (the keyword arguments).

    Raises:
        MalformedEvent: ``invalid_value`` with ``param`` ``response.…``.
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _invalid("Invalid type for 'response': expected an object.", "response")
    mods = params.get("output_modalities", params.get("modalities"))
    if mods is not None and (not isinstance(mods, list) or not mods or any(m not in ("text", "audio") for m in mods)):
        raise _invalid("Invalid value for 'response.output_modalities'.", "response.output_modalities")
    mods = mods or modalities
    instr = params.get("instructions")
    if instr is not None and not isinstance(instr, str):
        raise _invalid("Invalid type for 'response.instructions': expected a string.", "response.instructions")
    conv = params.get("conversation", "auto")
    if conv is not None and not isinstance(conv, str):
        raise _invalid("Invalid type for 'response.conversation': expected 'auto' or 'none'.",
                       "response.conversation")
    r_tools = validate_tools(params["tools"], "response.tools") if params.get("tools") is not None else tools
    choice = params.get("tool_choice")
    choice = validate_tool_choice(choice, r_tools, "response.tool_choice") if choice is not None else tool_choice
    if isinstance(choice, dict) and choice.get("type") == "function" \
            and choice.get("name") not in {t["name"] for t in function_tools(r_tools)}:
        choice = "auto"  # the session's forced tool is not among this response's tools
    max_tokens = _max_tokens(params.get("max_output_tokens", params.get("max_response_output_tokens",
                                                                        max_output_tokens)),
                             "response.max_output_tokens")
    metadata = params.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or len(metadata) > 16 or any(
                not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 512
                for k, v in metadata.items()):
            raise _invalid("Invalid 'response.metadata': expected at most 16 string keys (64 characters) "
                           "with string values (512 characters).", "response.metadata")
    result = ResponseParams(modalities=["audio"] if "audio" in mods else ["text"],
                            instructions=instr if instr is not None else instructions,
                            conversation=conv != "none", tools=r_tools, tool_choice=choice,
                            max_output_tokens=max_tokens, metadata=metadata)
    raw_input = params.get("input")
    if raw_input is not None:
        if not isinstance(raw_input, list):
            raise _invalid("Invalid type for 'response.input': expected an array.", "response.input")
        result.input = []
        for i, raw in enumerate(raw_input):
            p = f"response.input[{i}]"
            if isinstance(raw, dict) and raw.get("type") == "item_reference":
                ref = raw.get("id")
                if not isinstance(ref, str) or ref not in items:
                    raise MalformedEvent(f"Item with item_id not found: {ref}", code="item_not_found",
                                         param=f"{p}.id")
                result.input.append(items[ref])
                continue
            stored, pcm = parse_item(raw, p, to_pcm)
            if pcm is not None:
                result.input_pcm[stored["id"]] = pcm
            result.input.append(stored)
    return result


def truncate_segments(segments: list[tuple[float, float, str]], audio_end_ms: float) -> str:
    """The transcript of what was heard up to ``audio_end_ms``: sentences
    whose audio started before it, the last one cut to the words in
    proportion to the part of its audio heard (rounded down).

    >>> truncate_segments([(0, 1000, "One two."), (1000, 1000, " Three four five six.")], 1500)
    'One two. Three four'
    """
    out = ""
    for start_ms, dur_ms, text in segments:
        if start_ms >= audio_end_ms:
            break
        if start_ms + dur_ms <= audio_end_ms or dur_ms <= 0:
            out += text
            continue
        said = text.split()
        keep = math.floor(len(said) * (audio_end_ms - start_ms) / dur_ms)
        if keep:
            out += (" " if text.startswith(" ") else "") + " ".join(said[:keep])
        break
    return out
