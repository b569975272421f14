"""Pure parts of function calling and items: the tool rule, arguments valid
against their JSON Schema, replies about tool output, response parameters
and transcript truncation. No sockets, no event loop."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from voxgate.errors import MalformedEvent
from voxgate.voice.items import parse_item, parse_response_params, truncate_segments, validate_tool_choice
from voxgate.voice.responder import chat_messages
from voxgate.voice.session import SessionConfig, vad_parameters
from voxgate.voice.tools import choose_tool, fill_arguments, output_reply, words

WEATHER = {"type": "function", "name": "get_weather", "description": "Look up the weather forecast",
           "parameters": {"type": "object", "properties": {
               "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
               "required": ["city"]}}
TIMER = {"type": "function", "name": "start_timer", "description": "Count down",
         "parameters": {"type": "object", "properties": {"minutes": {"type": "integer", "minimum": 1,
                                                                     "maximum": 60}},
                        "required": ["minutes"]}}


@pytest.mark.parametrize("text,choice,expected", [
    ("what's the weather in rome", "auto", "get_weather"),  # description keyword
    ("please get weather", "auto", "get_weather"),  # name with _ as spaces
    ("start timer for ten minutes", "auto", "start_timer"),
    ("look up something", "auto", None),  # "look" is too short to be a keyword
    ("hello", "auto", None),
    ("hello", "required", "get_weather"),  # nothing named: the first tool
    ("what's the weather", "none", None),
    ("what's the weather", {"type": "function", "name": "start_timer"}, "start_timer"),
])
def test_choose_tool(text, choice, expected):
    call = choose_tool([WEATHER, TIMER], choice, text)
    assert (call.name if call else None) == expected
    if call is not None:
        tool = WEATHER if call.name == "get_weather" else TIMER
        jsonschema.validate(call.arguments, tool["parameters"])


def test_choose_tool_after_a_non_user_item():
    assert choose_tool([WEATHER], "auto", "the weather", user_turn=False) is None
    assert choose_tool([WEATHER], "required", "the weather", user_turn=False).name == "get_weather"
    assert choose_tool([{"type": "mcp", "server_label": "x"}], "required", "x") is None


def test_arguments_from_words():
    said = words("what's the weather in Rome in fahrenheit")
    assert fill_arguments(WEATHER["parameters"], said, "get_weather") == {"city": "rome", "unit": "fahrenheit"}
    assert fill_arguments(TIMER["parameters"], words("start timer for twenty five minutes")) == {"minutes": 25}
    assert fill_arguments(TIMER["parameters"], words("start timer for 500 minutes")) == {"minutes": 60}
    assert fill_arguments(TIMER["parameters"], words("start timer")) == {"minutes": 1}


@pytest.mark.parametrize("text,city", [
    ("What is the weather forecast in London?", "london"),  # "is" is followed only by naming words
    ("forecast for the weather in rome please", "rome please"),
    ("the weather is rainy in paris", "rainy"),  # the first lead word that leaves words
    ("weather forecast", "weather forecast"),  # no lead word: all the words
])
def test_string_argument_skips_the_words_that_named_the_tool(text, city):
    call = choose_tool([WEATHER], "auto", text)
    assert call is not None and call.arguments == {"city": city}


SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"q": {"type": "string", "minLength": 5, "maxLength": 8}}, "required": ["q"]},
    {"type": "object", "properties": {"flag": {"type": "boolean"}, "n": {"type": "number", "minimum": 2.5}},
     "required": ["flag", "n"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}, "minItems": 2}},
     "required": ["tags"]},
    {"type": "object", "properties": {"where": {"type": "object", "properties": {
        "lat": {"type": "number"}, "name": {"type": ["string", "null"]}}, "required": ["lat", "name"]}},
     "required": ["where"]},
    {"type": "object", "properties": {"mode": {"const": "fast"}, "x": {"anyOf": [{"type": "integer"},
                                                                                {"type": "string"}]}},
     "required": ["mode", "x"], "additionalProperties": False},
    {"type": "object", "properties": {"size": {"type": "string", "enum": ["s", "m"], "default": "m"}},
     "required": ["size"]},
    {"type": "object"},
]


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("text", ["", "hello there", "q is a long sentence with words flag n 7 where lat 3"])
def test_arguments_always_valid(schema, text):
    jsonschema.validate(fill_arguments(schema, words(text)), schema)


def test_output_reply():
    assert output_reply("get_weather", '{"temp": 21, "sunny": true}') == \
        "The get weather result is: temp 21, sunny yes."
    assert output_reply(None, "plain text.") == "The result is: plain text."
    assert output_reply("f", "") == "The f result is: empty."
    assert output_reply("f", " ".join(["w"] * 40)).endswith("w...")


def test_parse_items():
    def no_audio(b64, param):
        raise AssertionError("no audio expected")

    item, pcm = parse_item({"type": "function_call_output", "call_id": "c1", "output": "ok"}, "item", no_audio)
    assert pcm is None and item["type"] == "function_call_output" and item["call_id"] == "c1"
    with pytest.raises(MalformedEvent) as info:
        parse_item({"type": "function_call_output", "output": "ok"}, "item", no_audio)
    assert info.value.param == "item.call_id"
    call, _ = parse_item({"type": "function_call", "name": "f", "arguments": "{}"}, "item", no_audio)
    assert call["call_id"].startswith("call_")
    with pytest.raises(MalformedEvent):
        parse_item({"type": "message", "role": "tool", "content": []}, "item", no_audio)


def test_chat_messages_map_calls_and_outputs():
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "x"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_audio", "transcript": ""}]},
    ]
    assert chat_messages(items) == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "x"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]


def _params(params, **kw):
    base = {"modalities": ["audio"], "instructions": "i", "tools": [WEATHER], "tool_choice": "auto",
            "max_output_tokens": "inf", "items": {}, "to_pcm": lambda b64, p: b""}
    return parse_response_params(params, **(base | kw))


def test_response_params():
    p = _params({"metadata": {"k": "v"}, "conversation": "none", "max_output_tokens": 12,
                 "output_modalities": ["text"], "instructions": "x"})
    assert (p.metadata, p.conversation, p.max_output_tokens, p.modalities, p.instructions) == \
        ({"k": "v"}, False, 12, ["text"], "x")
    assert _params(None).tools == [WEATHER] and _params({}).conversation is True
    for bad, param in [({"max_output_tokens": 0}, "response.max_output_tokens"),
                       ({"metadata": {"k": 1}}, "response.metadata"),
                       ({"input": [{"type": "item_reference", "id": "nope"}]}, "response.input[0].id"),
                       ({"tools": "x"}, "response.tools"),
                       ({"tool_choice": "sometimes"}, "response.tool_choice")]:
        with pytest.raises(MalformedEvent) as info:
            _params(bad)
        assert info.value.param == param
    forced = {"type": "function", "name": "get_weather"}
    assert validate_tool_choice(forced, [WEATHER], "tool_choice") == forced
    assert _params({"tools": []}, tool_choice=forced).tool_choice == "auto"


def test_truncate_segments():
    segs = [(0.0, 1000.0, "One two."), (1000.0, 1000.0, " Three four five six.")]
    assert truncate_segments(segs, 0) == ""
    assert truncate_segments(segs, 500) == "One"
    assert truncate_segments(segs, 1000) == "One two."
    assert truncate_segments(segs, 1750) == "One two. Three four five"
    assert truncate_segments(segs, 2000) == "One two. Three four five six."


def test_semantic_vad_config():
    cfg = SessionConfig(model="gpt-realtime")
    cfg.update({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "semantic_vad",
                                                                         "eagerness": "high"}}}})
    td = cfg.turn_detection
    assert td == {"type": "semantic_vad", "eagerness": "high", "create_response": True, "interrupt_response": True}
    assert vad_parameters(td) == (0.5, 300, 400)
    assert vad_parameters({"type": "semantic_vad"}) == (0.5, 300, 800)
    assert vad_parameters({"type": "server_vad", "silence_duration_ms": 900}) == (0.5, 300, 900)
    cfg.update({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad"}}}})
    assert cfg.turn_detection["silence_duration_ms"] == 500 and "eagerness" not in cfg.turn_detection
