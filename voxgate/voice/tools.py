"""Function calling for the deterministic ``assistant`` responder: which tool
to call and with which arguments. Pure code, no I/O.

Follows the GA Realtime reference for ``session.tools`` / ``response.tools``
(``{"type": "function", "name", "description", "parameters"}``) and
``tool_choice`` (``"auto"``, ``"none"``, ``"required"``,
``{"type": "function", "name": …}``):
https://platform.openai.com/docs/api-reference/realtime-client-events/session/update

The rule (:func:`choose_tool`), applied to the user's words (the last user
message's text or transcript, lower-cased, split into ``[\\w']+`` words):

1. ``tool_choice`` ``"none"`` (or no function tools): no call.
2. ``{"type": "function", "name": N}``: tool ``N`` is called.
3. ``"auto"`` and ``"required"``: the first tool, in list order, that the
   words *name* is called. A tool is named when its name with ``_`` (and
   ``-``) as spaces appears as consecutive words (``get_weather`` ← "get
   weather"), or when a *keyword* of its description appears: a word of the
   description with 5 or more letters that is not in :data:`STOP_WORDS`
   ("Look up the weather forecast" → ``weather``, ``forecast``).
4. ``"required"`` with no tool named: the first tool is called.
5. ``"auto"`` calls nothing unless the context's last item is a user
   message: after a ``function_call_output`` the model speaks about the
   result (:func:`output_reply`), after its own reply it does not call again.

Arguments (:func:`fill_arguments`) are valid against the tool's
``parameters`` JSON Schema (object, properties, required, enum, const,
default, minimum/maximum, minLength/maxLength, minItems, anyOf/oneOf; not
``pattern``). Every required property is present; an optional one only when
the words give it a value. Values from the words, per property ``P`` (its
name with ``_`` as spaces):

- ``enum``: the first enum value whose text appears in the words, else the
  schema's ``default``, else the first enum value;
- string: the words after ``P`` when ``P`` appears, else (required only) the
  schema's ``default``, else the words after a :data:`LEAD_WORDS` word up to
  the next one, without the description keywords that named the tool and
  without leading :data:`ARTICLES`, from the first lead word that leaves
  some ("weather in *paris* for three days", "lights in the *kitchen*",
  "what is the weather forecast in *london*": after "is" only "the weather
  forecast", the naming words and an article), else all the words; at most 8
  words;
- integer / number: the first number (digits, or English number words up to
  ninety-nine: "ten" → 10) after ``P``, else the first number in the words,
  else the default, else ``minimum`` or 0, clamped to minimum/maximum;
- boolean: true when ``P`` appears, else the default, else false;
- array: ``[]`` (or ``minItems`` default items); object: its own required
  properties, filled the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["STOP_WORDS", "LEAD_WORDS", "ARTICLES", "ToolCall", "words", "function_tools", "tool_names",
           "choose_tool", "fill_arguments", "output_reply"]

STOP_WORDS = frozenset({
    "about", "above", "after", "again", "against", "being", "below", "between", "could", "every",
    "function", "given", "other", "returns", "should", "their", "there", "these", "those", "through",
    "under", "until", "using", "where", "which", "while", "would", "value", "values", "current",
})
"""Description words that never name a tool."""
LEAD_WORDS = ("in", "for", "to", "at", "about", "of", "named", "called", "is")
"""Words after which a required string argument is taken from the user."""
ARTICLES = ("the", "a", "an", "my", "our", "your")
"""Dropped from the start of a string argument."""
MAX_ARG_WORDS = 8

_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A decided call: the tool's ``name`` and its ``arguments`` (a JSON value)."""

    name: str
    arguments: dict[str, Any]


def words(text: str | None) -> list[str]:
    """Lower-cased ``[\\w']+`` words of ``text``."""
    return re.findall(r"[\w']+", (text or "").lower())


def function_tools(tools: Any) -> list[dict[str, Any]]:
    """The ``type: function`` tools (with a string name) of a tools list."""
    if not isinstance(tools, list):
        return []
    return [t for t in tools if isinstance(t, dict) and t.get("type", "function") == "function"
            and isinstance(t.get("name"), str) and t["name"]]


def tool_names(tools: Any) -> list[str]:
    return [t["name"] for t in function_tools(tools)]


def _phrase(name: str) -> list[str]:
    return words(name.replace("_", " ").replace("-", " "))


def _find(haystack: list[str], needle: list[str]) -> int:
    """Index just after the first occurrence of ``needle`` in ``haystack``, or -1."""
    n = len(needle)
    if not n:
        return -1
    for i in range(len(haystack) - n + 1):
        if haystack[i:i + n] == needle:
            return i + n
    return -1


def _keywords(description: Any) -> set[str]:
    if not isinstance(description, str):
        return set()
    return {w for w in words(description) if len(w) >= 5 and w.isalpha() and w not in STOP_WORDS}


def _named(tool: dict[str, Any], said: list[str]) -> bool:
    return _find(said, _phrase(tool["name"])) >= 0 or bool(_naming_keywords(tool, said))


def _naming_keywords(tool: dict[str, Any], said: list[str]) -> frozenset[str]:
    """The keywords of the tool's description among ``said``."""
    return frozenset(_keywords(tool.get("description")) & set(said))


def _call(tool: dict[str, Any], said: list[str]) -> ToolCall:
    return ToolCall(tool["name"], fill_arguments(tool.get("parameters"), said, tool["name"],
                                                 naming=_naming_keywords(tool, said)))


def choose_tool(tools: Any, tool_choice: Any, user_text: str | None, *,
                user_turn: bool = True) -> ToolCall | None:
    """The call the deterministic responder makes, or None to reply in words
    (the rule is in the module docstring)."""
    candidates = function_tools(tools)
    if tool_choice == "none" or not candidates:
        return None
    said = words(user_text)
    if isinstance(tool_choice, dict):
        name = tool_choice.get("name")
        forced = next((t for t in candidates if t["name"] == name), None)
        if forced is None:
            return None
        return _call(forced, said)
    if tool_choice == "auto" and not user_turn:
        return None
    chosen = next((t for t in candidates if _named(t, said)), None)
    if chosen is None and tool_choice == "required":
        chosen = candidates[0]
    if chosen is None:
        return None
    return _call(chosen, said)


# -- arguments -----------------------------------------------------------------

def _number_at(said: list[str], start: int) -> float | None:
    for i in range(max(0, start), len(said)):
        w = said[i]
        if re.fullmatch(r"-?\d+(\.\d+)?", w):
            return float(w)
        if w in _UNITS:
            return float(_UNITS.index(w))
        if w in _TENS[2:]:
            value = _TENS.index(w) * 10
            if i + 1 < len(said) and said[i + 1] in _UNITS[1:10]:
                value += _UNITS.index(said[i + 1])
            return float(value)
    return None


def _lead_phrase(said: list[str], naming: frozenset[str]) -> list[str]:
    """The words after a lead word up to the next one, without ``naming``
    words and leading articles, from the first lead word that leaves some;
    all the words when none does."""
    leads = [i for i, w in enumerate(said) if w in LEAD_WORDS]
    for n, lead in enumerate(leads):
        stop = leads[n + 1] if n + 1 < len(leads) else len(said)
        picked = [w for w in said[lead + 1:stop] if w not in naming]
        while picked and picked[0] in ARTICLES:
            picked = picked[1:]
        if picked:
            return picked
    return said


def _schema_type(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is None and "properties" in schema:
        kind = "object"
    return kind if isinstance(kind, str) else None


def _string(schema: dict[str, Any], text: str) -> str:
    lo, hi = schema.get("minLength"), schema.get("maxLength")
    if isinstance(hi, int):
        text = text[:hi].rstrip() if len(text) > hi else text
    if isinstance(lo, int) and len(text) < lo:
        text = text + "x" * (lo - len(text))
    return text


def _value(schema: Any, said: list[str], prop: str | None, *, required: bool,
           naming: frozenset[str] = frozenset()) -> tuple[bool, Any]:
    """(found, value): a value for one schema. ``found`` is False when the
    words gave nothing and the property is optional (leave it out).
    ``naming``: the words that named the tool (see :func:`_lead_phrase`)."""
    if not isinstance(schema, dict):
        return required, ""
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _value(schema[key][0], said, prop, required=required, naming=naming)
    if "const" in schema:
        return True, schema["const"]
    after = _find(said, _phrase(prop)) if prop else -1
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        for option in schema["enum"]:
            if _find(said, words(str(option))) >= 0:
                return True, option
        if not required:
            return False, None
        return True, schema.get("default", schema["enum"][0])
    kind = _schema_type(schema)
    if kind == "string":
        if after >= 0 and said[after:]:
            return True, _string(schema, " ".join(said[after:after + MAX_ARG_WORDS]))
        if not required:
            return False, None
        if "default" in schema:
            return True, schema["default"]
        return True, _string(schema, " ".join(_lead_phrase(said, naming)[:MAX_ARG_WORDS]))
    if kind in ("integer", "number"):
        num = _number_at(said, after) if after >= 0 else None
        if num is None and (after >= 0 or required):
            num = _number_at(said, 0)
        if num is None:
            if not required:
                return False, None
            fallback = schema.get("default", schema.get("minimum", 0))
            num = float(fallback) if isinstance(fallback, (int, float)) else 0.0
        if isinstance(schema.get("minimum"), (int, float)):
            num = max(num, float(schema["minimum"]))
        if isinstance(schema.get("maximum"), (int, float)):
            num = min(num, float(schema["maximum"]))
        return True, int(num) if kind == "integer" or num.is_integer() else num
    if kind == "boolean":
        if after >= 0:
            return True, True
        return (True, bool(schema.get("default", False))) if required else (False, None)
    if kind == "array":
        if not required:
            return False, None
        n = schema.get("minItems", 0) if isinstance(schema.get("minItems"), int) else 0
        return True, [_value(schema.get("items"), said, None, required=True, naming=naming)[1] for _ in range(n)]
    if kind == "object":
        if not required and after < 0:
            return False, None
        return True, fill_arguments(schema, said, None, naming=naming)
    if kind == "null":
        return True, None
    return (True, schema.get("default", "")) if required else (False, None)


def fill_arguments(parameters: Any, said: list[str], tool_name: str | None = None, *,
                   naming: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Arguments for a tool whose ``parameters`` is a JSON Schema object, from
    the user's ``said`` words (see the module docstring); ``naming``: the
    description keywords by which the words named the tool. Never raises on
    an odd schema: unknown parts are filled with their ``default`` or ``""``."""
    if not isinstance(parameters, dict):
        return {}
    props = parameters.get("properties")
    if not isinstance(props, dict):
        return {}
    required = parameters.get("required")
    required_set = set(required) if isinstance(required, list) else set()
    if tool_name is not None:  # words naming the tool are not argument values
        end = _find(said, _phrase(tool_name))
        if end >= 0:
            said = said[:end - len(_phrase(tool_name))] + said[end:]
    out: dict[str, Any] = {}
    for name, schema in props.items():
        found, value = _value(schema, said, name, required=name in required_set, naming=naming)
        if found:
            out[name] = value
    return out


# -- speaking about a result ---------------------------------------------------

def _flatten(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{str(k).replace('_', ' ')} {_flatten(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_flatten(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def output_reply(name: str | None, output: str, max_words: int = 30) -> str:
    """The deterministic reply after a ``function_call_output``: the output
    (JSON flattened to ``key value, …``), at most ``max_words`` words.

    >>> output_reply("get_weather", '{"temperature": 21, "unit": "celsius"}')
    'The get weather result is: temperature 21, unit celsius.'
    """
    import json

    try:
        text = _flatten(json.loads(output))
    except ValueError:
        text = output
    said = text.split()
    text = " ".join(said[:max_words]).rstrip(".") + ("..." if len(said) > max_words else "")
    label = f"The {name.replace('_', ' ')} result" if name else "The result"
    return f"{label} is: {text or 'empty'}" + ("" if text.endswith("...") else ".")
