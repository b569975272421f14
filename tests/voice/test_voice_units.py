"""Pure parts of the voice provider: audio helpers, G.711, VAD, faults,
session config, responder, sentence splitting. No sockets, no event loop."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from tests.conftest import SPEECH
from voxgate.errors import MalformedEvent
from voxgate.voice import audio as A
from voxgate.voice.faults import DEFAULT_DROP_MS, Faults, parse_faults
from voxgate.voice.input_audio import InputAudio, decode_base64_audio
from voxgate.voice.responder import EMPTY_REPLY, GREETING, assistant_reply
from voxgate.voice.session import SessionConfig
from voxgate.voice.tts import split_sentences
from voxgate.voice.usage import cached_tokens, input_blocks, response_usage
from voxgate.voice.vad import SpeechStarted, SpeechStopped, TurnDetector, aggressiveness

# -- audio ---------------------------------------------------------------------

def test_load_pcm16_flac_wav_raw():
    jfk = A.load_pcm16(SPEECH / "jfk.flac")
    assert len(jfk) == 11 * 48000  # 11.0 s at 24 kHz, 2 bytes per sample
    wav = A.load_pcm16(SPEECH / "librivox-0880.wav", rate=16000)
    assert abs(len(wav) / 32000 - 3.0) < 0.1
    raw = A.load_pcm16(SPEECH / "goforward-16k-s16le.raw", rate=16000)
    assert raw == (SPEECH / "goforward-16k-s16le.raw").read_bytes()


@pytest.mark.parametrize("name", ["malformed-bad.wav", "malformed-evil.wav"])
def test_load_pcm16_malformed_raises_value_error(name):
    with pytest.raises(ValueError, match="not decodable audio"):
        A.load_pcm16(SPEECH / name)


def test_load_pcm16_missing_and_odd_raw(tmp_path):
    with pytest.raises(FileNotFoundError):
        A.load_pcm16(tmp_path / "nope.wav")
    odd = tmp_path / "odd.raw"
    odd.write_bytes(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="odd byte count"):
        A.load_pcm16(odd)


def test_pcm16_to_wav_round_trip():
    pcm = np.arange(-1000, 1000, dtype="<i2").tobytes()
    with wave.open(io.BytesIO(A.pcm16_to_wav(pcm, 24000))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        assert w.readframes(w.getnframes()) == pcm


def test_g711_decode_matches_itu_tables():
    assert A.ulaw_decode(b"\xff\x7f\x80\x00") == np.array([0, 0, 32124, -32124], "<i2").tobytes()
    assert A.alaw_decode(b"\xd5\x55\xaa\x2a") == np.array([8, -8, 32256, -32256], "<i2").tobytes()


@pytest.mark.parametrize("enc,dec", [(A.ulaw_encode, A.ulaw_decode), (A.alaw_encode, A.alaw_decode)])
def test_g711_round_trip_error_is_small(enc, dec):
    x = np.arange(-32768, 32768, 3, dtype="<i2")
    y = np.frombuffer(dec(enc(x.tobytes())), "<i2").astype(np.int32)
    err = np.abs(y - x.astype(np.int32))
    assert len(enc(x.tobytes())) == len(x)
    assert (err <= np.maximum(np.abs(x.astype(np.int32)) // 16, 16)).all()  # ≤ ~6 % (G.711 segments)


def test_resample_and_decimate_lengths():
    pcm = bytes(48000)  # 1 s at 24 kHz
    assert abs(len(A.resample_pcm16(pcm, 24000, 16000)) - 32000) <= 64
    assert len(A.decimate3(pcm)) == 16000
    assert A.pcm16_ms(48000, 24000) == 1000.0


# -- VAD -----------------------------------------------------------------------

def _events(detector, pcm8k, step=480):
    out = []
    for i in range(0, len(pcm8k), step):
        out += detector.feed(pcm8k[i:i + step])
    return out


def test_vad_silence_gives_no_events():
    assert _events(TurnDetector(), bytes(16000 * 2)) == []


def test_vad_real_speech_starts_and_stops():
    speech = A.load_pcm16(SPEECH / "goforward-16k-s16le.raw", rate=8000)
    pcm = bytes(8000) + speech + bytes(16000)  # 0.5 s silence, speech, 1 s silence
    events = _events(TurnDetector(prefix_padding_ms=300, silence_duration_ms=500), pcm)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert 0 <= events[0].audio_start_ms <= 500
    speech_end_ms = 500 + len(speech) / 16
    assert speech_end_ms - 300 < events[1].audio_end_ms <= speech_end_ms + 600


def test_input_audio_detects_a_turn_and_commits_the_speech():
    """The session's input buffer, sans I/O: 24 kHz chunks in, turn events out."""
    speech = A.load_pcm16(SPEECH / "goforward-16k-s16le.raw", rate=24000)
    pcm = bytes(24000) + speech + bytes(48000)  # 0.5 s silence, speech, 1 s silence
    audio = InputAudio()
    audio.reset_vad({"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                     "silence_duration_ms": 500})
    events = []
    for off in range(0, len(pcm), 4800):  # 100 ms appends
        for ev in audio.append(pcm[off:off + 4800], 24000):
            events.append(ev)
            if isinstance(ev, SpeechStarted):
                item_id = audio.speech_started(ev.audio_start_ms)
            else:
                start = audio.speech_offset(24000)
                committed, committed_ms = audio.take(start, 24000)
        if audio.idle:
            audio.trim(800, 24000)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert item_id.startswith("item_") and audio.speech_item_id == item_id
    assert audio.audio_ms == pytest.approx(len(pcm) / 48)
    assert len(speech) <= len(committed) <= committed_ms * 48  # the speech, from its start, and no more
    assert audio.buffered_ms(24000) < 1000  # what followed the turn, trimmed


def test_input_audio_without_turn_detection_keeps_everything():
    audio = InputAudio()
    audio.reset_vad(None)
    assert audio.append(bytes(48000), 24000) == [] and not audio.idle
    assert audio.buffered_ms(24000) == 1000
    audio.clear()
    assert (audio.buffered_ms(24000), audio.buffer_start_ms) == (0, 1000)


def test_decode_base64_audio_errors():
    assert decode_base64_audio("AAA=") == bytes(2)
    with pytest.raises(MalformedEvent) as info:
        decode_base64_audio("not base64!", "item.content[0].audio")
    assert (info.value.code, info.value.param) == ("invalid_base64", "item.content[0].audio")
    with pytest.raises(MalformedEvent) as info:
        decode_base64_audio(3)
    assert (info.value.code, info.value.param) == ("invalid_value", "audio")


def test_vad_threshold_mapping():
    assert [aggressiveness(t) for t in (0.0, 0.3, 0.5, 0.9, 1.0)] == [0, 1, 2, 3, 3]


# -- faults --------------------------------------------------------------------

def test_parse_faults():
    assert parse_faults(None) == Faults()
    assert parse_faults("drop") == Faults(drop_ms=DEFAULT_DROP_MS)
    assert parse_faults("drop:250,echo") == Faults(drop_ms=250, echo=True)
    assert parse_faults("server_error") == Faults(server_error=True)
    assert parse_faults("server_error:40") == Faults(server_error=True, server_error_ms=40)
    assert parse_faults("close:4001") == Faults(close_code=4001)
    assert parse_faults("delay_created:300") == Faults(delay_created_ms=300)
    assert Faults(echo=True).merge(Faults(drop_ms=5)) == Faults(echo=True, drop_ms=5)


@pytest.mark.parametrize("spec,message", [
    ("explode", "unknown fault 'explode'"),
    ("drop:soon", "fault drop: 'soon' is not a whole number of ms"),
    ("close:99", "fault close: code 99 outside 1000-4999"),
])
def test_parse_faults_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_faults(spec)


# -- session config ----------------------------------------------------------

def test_session_defaults_are_ga_shape():
    s = SessionConfig(model="gpt-realtime").to_dict()
    assert s["type"] == "realtime" and s["object"] == "realtime.session" and s["id"].startswith("sess_")
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert s["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0}


def test_session_update_ga_and_beta():
    cfg = SessionConfig(model="gpt-realtime")
    cfg.update({"type": "realtime", "instructions": "Be brief.",
                "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None,
                                    "transcription": {"model": "whisper-1"}},
                          "output": {"format": {"type": "audio/pcma"}, "voice": "marin"}}})
    d = cfg.to_dict()
    assert d["instructions"] == "Be brief."
    assert d["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert d["audio"]["input"]["turn_detection"] is None
    assert d["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    assert d["audio"]["output"]["format"] == {"type": "audio/pcma"} and d["audio"]["output"]["voice"] == "marin"
    cfg.update({"input_audio_format": "pcm16", "turn_detection": {"type": "server_vad", "silence_duration_ms": 900},
                "modalities": ["text"]})
    d = cfg.to_dict()
    assert d["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert d["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 900
    assert d["output_modalities"] == ["text"]


@pytest.mark.parametrize("session,param", [
    ({"type": "transcription"}, "session.type"),
    ({"audio": {"input": {"format": {"type": "audio/opus"}}}}, "session.audio.input.format"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}, "session.audio.input.format.rate"),
    ({"instructions": 3}, "session.instructions"),
    ({"audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}}, "session.audio.input.turn_detection.type"),
    ({"audio": {"output": {"speed": 9}}}, "session.audio.output.speed"),
])
def test_session_update_rejects(session, param):
    cfg = SessionConfig(model="gpt-realtime")
    before = cfg.to_dict()
    with pytest.raises(MalformedEvent) as info:
        cfg.update(session)
    assert info.value.code == "invalid_value" and info.value.param == param
    assert cfg.to_dict() == before  # all or nothing


def test_usage_totals():
    u = response_usage(in_text=3, in_audio=10, out_text=4, out_audio=20)
    assert (u["input_tokens"], u["output_tokens"], u["total_tokens"]) == (13, 24, 37)
    assert u["input_token_details"]["audio_tokens"] == 10 and u["output_token_details"]["audio_tokens"] == 20


def test_cached_tokens_are_the_unchanged_prefix_of_the_previous_input():
    user = {"id": "item_u", "type": "message", "role": "user", "content": [{"type": "input_audio",
                                                                          "transcript": "hi"}], "_audio_ms": 950}
    reply = {"id": "item_a", "type": "message", "role": "assistant",
             "content": [{"type": "output_audio", "transcript": "Hello there, friend."}]}
    call = {"id": "item_c", "type": "function_call", "arguments": '{"city": "rome"}', "content": []}
    first = input_blocks("Be brief.", [user], {})
    assert [(b.text_tokens, b.audio_tokens) for b in first] == [(3, 0), (0, 10)]  # audio, not its transcript
    second = input_blocks("Be brief.", [user, reply, call], {})
    assert [(b.text_tokens, b.audio_tokens) for b in second[2:]] == [(5, 0), (4, 0)]
    assert cached_tokens(first, second) == (3, 10)
    truncated = input_blocks("Be brief.", [user, reply | {"content": [{"type": "output_audio",
                                                                      "transcript": "Hello"}]}], {})
    assert cached_tokens(second, truncated) == (3, 10)  # the truncated reply is a new piece
    assert cached_tokens(second, input_blocks("Be long.", [user, reply], {})) == (0, 0)
    u = response_usage(in_text=8, in_audio=10, out_text=2, cached_text=3, cached_audio=10)
    assert u["input_token_details"]["cached_tokens"] == 13
    assert u["input_token_details"]["cached_tokens_details"] == {"text_tokens": 3, "audio_tokens": 10,
                                                                "image_tokens": 0}


# -- responder, sentences --------------------------------------------------------

def test_assistant_reply():
    assert assistant_reply(None) == GREETING
    assert assistant_reply("") == EMPTY_REPLY
    assert assistant_reply("go forward ten meters") == "You said: go forward ten meters. I heard 4 words."
    assert assistant_reply("hello there") == GREETING
    long = assistant_reply(" ".join(["word"] * 20))
    assert long.endswith("... I heard 20 words.")


def test_first_piece_is_short_for_a_fast_first_audio():
    text = "You said: and all my fellow america and not like your kind brain. I heard 12 words."
    assert split_sentences(text) == [
        "You said:", "and all my fellow america and not like your kind brain.", "I heard 12 words."]
    assert " ".join(split_sentences(text)) == text
    no_break = "A first sentence with no clause break in its first forty characters, then more."
    assert split_sentences(no_break) == [no_break]


def test_split_sentences():
    assert split_sentences("Hi there. How are you? Fine!") == ["Hi there.", "How are you?", "Fine!"]
    assert split_sentences("  ") == []
    pieces = split_sentences("a, " * 150)
    assert all(len(p) <= 200 for p in pieces) and len(pieces) > 1
