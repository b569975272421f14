"""The pure Twilio Media Streams protocol: frames as Twilio's message
reference shows them, exact errors, the played-audio tracker, request
signatures. No event loop."""

from __future__ import annotations

import base64

import orjson
import pytest

from voxgate.errors import ConcurrencyLimited, QuotaExceeded
from voxgate.proxy.telephony.twilio import dtmf_item, refusal_close_code, session_config
from voxgate.proxy.telephony.twilio_protocol import (
    Connected,
    Dtmf,
    Mark,
    Media,
    PlaybackTracker,
    Start,
    Stop,
    StreamState,
    Truncation,
    TwilioProtocolError,
    bearer_from_parameters,
    clear_message,
    compute_signature,
    mark_message,
    media_message,
    signature_valid,
)

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
START = {
    "event": "start", "sequenceNumber": "1", "streamSid": SID,
    "start": {"accountSid": "AC123", "streamSid": SID, "callSid": "CA123",
              "tracks": ["inbound"], "customParameters": {"authorization": "Bearer vg_live_x"},
              "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
}


def frame(**fields) -> str:
    return orjson.dumps(fields).decode()


def media(seq: int, payload: bytes = b"\xff" * 160, sid: str = SID) -> str:
    return frame(event="media", sequenceNumber=str(seq), streamSid=sid,
                 media={"track": "inbound", "chunk": str(seq - 1), "timestamp": "5",
                        "payload": base64.b64encode(payload).decode()})


def started() -> StreamState:
    state = StreamState()
    state.receive(frame(event="connected", protocol="Call", version="1.0.0"))
    state.receive(orjson.dumps(START).decode())
    return state


def test_a_stream_as_twilio_sends_it():
    state = StreamState()
    assert state.receive(frame(event="connected", protocol="Call", version="1.0.0")) == \
        Connected("Call", "1.0.0")
    start = state.receive(orjson.dumps(START).decode())
    assert start == Start(1, SID, "AC123", "CA123", ("inbound",),
                          {"authorization": "Bearer vg_live_x"},
                          {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1})
    m = state.receive(media(2, b"\x01\x02\x03"))
    assert m == Media(2, SID, "inbound", 1, 5, "AQID", 3)
    assert state.receive(frame(event="dtmf", streamSid=SID, sequenceNumber="3",
                               dtmf={"track": "inbound_track", "digit": "5"})) == \
        Dtmf(3, SID, "inbound_track", "5")
    assert state.receive(frame(event="mark", sequenceNumber="4", streamSid=SID,
                               mark={"name": "vg1"})) == Mark(4, SID, "vg1")
    assert state.receive(frame(event="stop", sequenceNumber="5", streamSid=SID,
                               stop={"accountSid": "AC123", "callSid": "CA123"})) == \
        Stop(5, SID, "AC123", "CA123")
    assert state.stopped and state.last_sequence == 5


@pytest.mark.parametrize("data, code, message", [
    (b"\x00\x01", "binary_frame", "binary frames are not part of the media streams protocol; "
                                  "every message is JSON text"),
    ("{nope", "invalid_json", "message is not valid JSON"),
    ("[1]", "invalid_json", "message is not a JSON object"),
    (frame(sequenceNumber="2"), "missing_field", "message has no string 'event'"),
    (frame(event="hangup", sequenceNumber="2", streamSid=SID), "unknown_event",
     "unknown event 'hangup'"),
    (frame(event="media", sequenceNumber="2", streamSid=SID), "missing_field",
     "media has no 'media'"),
    (frame(event="media", sequenceNumber="two", streamSid=SID, media={}), "invalid_field",
     "media field 'sequenceNumber' is not a decimal number"),
    (frame(event="media", sequenceNumber="2", streamSid=SID,
           media={"track": "inbound", "chunk": "1", "timestamp": "5", "payload": "%%%="}),
     "invalid_base64", "media payload is not valid base64"),
    (frame(event="media", sequenceNumber="2", streamSid=SID,
           media={"track": "inbound", "chunk": "1", "timestamp": "5", "payload": "AQI"}),
     "invalid_base64", "media payload is not valid base64"),
    (media(2, sid="MZother"), "wrong_stream_sid", "media for another streamSid ('MZother')"),
    (orjson.dumps(START).decode(), "already_started", "a second start on one stream"),
    (frame(event="dtmf", streamSid=SID, sequenceNumber="2", dtmf={"digit": "55"}),
     "invalid_field", "dtmf digit '55' is not a DTMF key"),
])
def test_bad_frames_after_start(data, code, message):
    state = started()
    with pytest.raises(TwilioProtocolError) as err:
        state.receive(data)
    assert (err.value.code, err.value.message) == (code, message)
    assert err.value.close_code == (1003 if code == "binary_frame" else 1008)


def test_media_before_start_and_other_formats():
    with pytest.raises(TwilioProtocolError, match="^not_started: media before start$"):
        StreamState().receive(media(1))
    bad = orjson.loads(orjson.dumps(START))
    bad["start"]["mediaFormat"]["sampleRate"] = 16000
    with pytest.raises(TwilioProtocolError) as err:
        StreamState().receive(orjson.dumps(bad).decode())
    assert err.value.code == "unsupported_media_format"
    state = started()
    state.receive(frame(event="stop", sequenceNumber="2", streamSid=SID, stop={}))
    with pytest.raises(TwilioProtocolError, match="message after stop"):
        state.receive(media(3))


def test_messages_to_twilio_have_exactly_the_reference_fields():
    assert orjson.loads(media_message(SID, "AQID")) == {
        "event": "media", "streamSid": SID, "media": {"payload": "AQID"}}
    assert orjson.loads(mark_message(SID, "vg1")) == {
        "event": "mark", "streamSid": SID, "mark": {"name": "vg1"}}
    assert orjson.loads(clear_message(SID)) == {"event": "clear", "streamSid": SID}


def test_played_audio_counts_echoed_marks_only():
    t = PlaybackTracker()
    names = [t.sent("item_a", 160) for _ in range(5)]  # 5 × 20 ms
    assert t.playing and t.sent_ms("item_a") == 100.0
    assert t.echoed(names[1])  # marks are echoed in order: the first two played
    assert t.played_ms("item_a") == 40.0
    assert not t.echoed("not-ours")
    assert t.clear() == Truncation("item_a", 40)
    for name in names[2:]:  # Twilio echoes the pending marks after a clear
        assert not t.echoed(name)
    assert t.played_ms("item_a") == 40.0 and not t.playing
    assert t.clear() is None  # nothing queued: nothing to clear


def test_played_audio_of_the_item_playing():
    t = PlaybackTracker()
    first = [t.sent("item_a", 800) for _ in range(2)]
    t.echoed(first[-1])  # item_a fully played
    b = t.sent("item_b", 400)
    t.sent("item_b", 400)
    t.echoed(b)
    assert t.clear() == Truncation("item_b", 50)
    assert t.played_ms("item_a") == 200.0


def test_signature_as_twilio_computes_it():
    # Twilio's published validation vector (its helper libraries' request
    # validator tests): this URL, these POST parameters, auth token 12345.
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
              "From": "+14158675309", "To": "+18005551212"}
    assert compute_signature("12345", url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    wss = "wss://voxgate.example.com/v1/telephony/twilio"
    sig = compute_signature("tok", wss)
    assert signature_valid("tok", [wss], sig)
    assert signature_valid("tok", ["wss://voxgate.example.com:443/v1/telephony/twilio"], sig)
    assert not signature_valid("tok", [wss], None)
    assert not signature_valid("other", [wss], sig)
    assert not signature_valid("tok", [wss + "?x=1"], sig)


def test_key_and_session_from_custom_parameters():
    assert bearer_from_parameters({"authorization": "Bearer ek_abc"}) == "ek_abc"
    assert bearer_from_parameters({"Authorization": "vg_live_k"}) == "vg_live_k"
    assert bearer_from_parameters({"authorization": "Bearer "}) is None
    assert bearer_from_parameters({}) is None
    cfg = session_config({"instructions": "key's", "voice": "alloy", "model": "m"},
                         {"instructions": "call's", "audio": {"input": {
                             "format": {"type": "audio/pcm", "rate": 24000},
                             "turn_detection": {"type": "server_vad"}}}})
    assert cfg == {"type": "realtime", "instructions": "call's", "voice": "alloy",
                   "audio": {"input": {"format": {"type": "audio/pcmu"},
                                       "turn_detection": {"type": "server_vad"}},
                             "output": {"format": {"type": "audio/pcmu"}}}}
    assert dtmf_item("5") == {"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "DTMF: 5"}]}}
    assert refusal_close_code(ConcurrencyLimited("busy")) == 1013
    assert refusal_close_code(QuotaExceeded("spent")) == 1008
