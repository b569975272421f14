"""The provider price list and a session's provider cost
(``voxgate.models.pricing``): pure arithmetic, exact to 1e-6 USD, figures
computed by hand below each case."""

from __future__ import annotations

from decimal import Decimal

import pytest

from voxgate.errors import ConfigError
from voxgate.metering.events import CLIENT, UPSTREAM, classify
from voxgate.metering.meter import SessionMeter
from voxgate.models import Measurements
from voxgate.models.pricing import (
    PRICE_FIELDS,
    SessionCost,
    load_prices,
    micros_to_usd,
    round_usd,
    session_cost,
    transcription_model,
    usd_to_micros,
)

PRICES = load_prices()

# Two response.done usages (GA RealtimeResponseUsage): text/audio tokens
# include the cached ones, which cached_tokens_details breaks down.
USAGE_1 = {"total_tokens": 2360, "input_tokens": 2000, "output_tokens": 360,
           "input_token_details": {"text_tokens": 1200, "audio_tokens": 800, "image_tokens": 0,
                                   "cached_tokens": 1024,
                                   "cached_tokens_details": {"text_tokens": 1000, "audio_tokens": 24,
                                                             "image_tokens": 0}},
           "output_token_details": {"text_tokens": 60, "audio_tokens": 300}}
USAGE_2 = {"total_tokens": 3340, "input_tokens": 2800, "output_tokens": 540,
           "input_token_details": {"text_tokens": 1300, "audio_tokens": 1500, "image_tokens": 0,
                                   "cached_tokens": 1152,
                                   "cached_tokens_details": {"text_tokens": 1100, "audio_tokens": 52,
                                                             "image_tokens": 0}},
           "output_token_details": {"text_tokens": 40, "audio_tokens": 500}}
# Summed: text in 2500 (2100 cached → 400 uncached), audio in 2300 (76 cached
# → 2224 uncached), text out 100, audio out 800.
# gpt-realtime ($ per 1M: text 4 / 0.40 cached / 16 out, audio 32 / 0.40 / 64):
#   400×4 + 2100×0.40 + 2224×32 + 76×0.40 + 100×16 + 800×64
#   = 1600 + 840 + 71168 + 30.4 + 1600 + 51200 = 126438.4 → $0.1264384 → $0.126438
# gpt-realtime-mini (text 0.60 / 0.06 / 2.40, audio 10 / 0.30 / 20):
#   400×0.60 + 2100×0.06 + 2224×10 + 76×0.30 + 100×2.40 + 800×20
#   = 240 + 126 + 22240 + 22.8 + 240 + 16000 = 38868.8 → $0.0388688 → $0.038869
REALTIME_USD = Decimal("0.126438")
MINI_USD = Decimal("0.038869")
# gpt-4o-transcribe tokens (text in 2.50, audio in 6.00, text out 10.00):
#   20×2.50 + 100×6.00 + 30×10.00 = 950 → $0.00095
TRANSCRIPTION = {"type": "tokens", "input_tokens": 120, "output_tokens": 30, "total_tokens": 150,
                 "input_token_details": {"text_tokens": 20, "audio_tokens": 100}}


def measured(*usages: dict, session: dict | None = None,
             transcriptions: tuple[dict, ...] = ()) -> Measurements:
    """Measurements of a session whose provider sent ``usages`` as
    response.done usage and ``transcriptions`` as transcription usage, fed
    through the real classifier and meter."""
    meter = SessionMeter(0.0)
    meter.record(classify(UPSTREAM, "session.created", 100,
                          {"type": "session.created", "session": session or {"type": "realtime"}}), 50.0)
    for usage in usages:
        meter.record(classify(UPSTREAM, "response.done", 100, {
            "type": "response.done", "response": {"status": "completed", "usage": usage}}), 60.0)
    for usage in transcriptions:
        meter.record(classify(UPSTREAM, "conversation.item.input_audio_transcription.completed", 100, {
            "type": "conversation.item.input_audio_transcription.completed", "item_id": "item_1",
            "content_index": 0, "transcript": "hello", "usage": usage}), 70.0)
    meter.record(classify(CLIENT, "response.create", 30, {"type": "response.create"}), 80.0)
    return meter.measurements()


def test_gpt_realtime_by_hand():
    cost = session_cost(PRICES, "gpt-realtime", measured(USAGE_1, USAGE_2))
    assert cost == SessionCost(REALTIME_USD, None, cost.lines)
    assert cost.micros == 126438
    by_kind = {line.kind: (line.quantity, line.amount_usd) for line in cost.lines}
    assert by_kind == {
        "text_input": (400, Decimal("0.0016")), "cached_text_input": (2100, Decimal("0.00084")),
        "audio_input": (2224, Decimal("0.071168")), "cached_audio_input": (76, Decimal("0.0000304")),
        "text_output": (100, Decimal("0.0016")), "audio_output": (800, Decimal("0.0512"))}


def test_gpt_realtime_mini_by_hand():
    assert session_cost(PRICES, "gpt-realtime-mini", measured(USAGE_1, USAGE_2)).usd == MINI_USD


def test_dated_snapshots_are_priced_as_their_model():
    m = measured(USAGE_1, USAGE_2)
    assert session_cost(PRICES, "gpt-realtime-2025-08-28", m).usd == REALTIME_USD
    assert session_cost(PRICES, "gpt-realtime-mini-2025-10-06", m).usd == MINI_USD


def test_sums_cost_the_same_as_responses_one_by_one():
    """Usage is additive: the session's cost is the sum of its responses'
    exact costs, rounded once."""
    one = session_cost(PRICES, "gpt-realtime", measured(USAGE_1)).lines
    two = session_cost(PRICES, "gpt-realtime", measured(USAGE_2)).lines
    exact = sum(line.amount_usd for line in (*one, *two))
    assert exact == Decimal("0.1264384")
    assert round_usd(exact) == REALTIME_USD


def test_transcription_priced_at_its_own_model():
    session = {"type": "realtime", "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}}
    m = measured(USAGE_1, USAGE_2, session=session, transcriptions=(TRANSCRIPTION,))
    assert m.transcription == {"gpt-4o-transcribe": {"input_text_tokens": 20, "input_audio_tokens": 100,
                                                     "output_text_tokens": 30, "seconds": 0.0}}
    # 0.1264384 + 0.00095 = 0.1273884 → 0.127388
    assert session_cost(PRICES, "gpt-realtime", m).usd == Decimal("0.127388")


def test_duration_billed_transcription():
    """whisper-1: {"type": "duration", "seconds"} at $0.006 a minute (beta
    session shape names the model): 95 s → 95/60 × 0.006 = $0.0095."""
    session = {"input_audio_transcription": {"model": "whisper-1"}}
    m = measured(session=session, transcriptions=({"type": "duration", "seconds": 60},
                                                  {"type": "duration", "seconds": 35}))
    assert session_cost(PRICES, "gpt-realtime", m).usd == Decimal("0.009500")


def test_unknown_model_is_null_with_reason():
    cost = session_cost(PRICES, "gpt-unheard-of", measured(USAGE_1))
    assert cost.usd is None
    assert cost.reason == "the session's model 'gpt-unheard-of' is not in the price list"


def test_a_kind_of_token_without_price_is_null_with_reason():
    """gpt-4o-realtime-preview lists no image price: image tokens make the
    cost unknown, never 0."""
    usage = {**USAGE_1, "input_token_details": {**USAGE_1["input_token_details"], "image_tokens": 258}}
    cost = session_cost(PRICES, "gpt-4o-realtime-preview", measured(usage))
    assert (cost.usd, cost.reason) == (
        None, "no image_input price for model 'gpt-4o-realtime-preview' (258 tokens used)")
    # gpt-realtime has one: 258 image tokens × $5 = $0.00129 more than without
    base = session_cost(PRICES, "gpt-realtime", measured(USAGE_1)).lines
    with_image = session_cost(PRICES, "gpt-realtime", measured(usage)).lines
    assert sum(x.amount_usd for x in with_image) - sum(x.amount_usd for x in base) == Decimal("0.00129")


def test_transcription_without_a_named_model_is_null_with_reason():
    cost = session_cost(PRICES, "gpt-realtime", measured(USAGE_1, transcriptions=(TRANSCRIPTION,)))
    assert cost.usd is None
    assert cost.reason == "input transcription usage without a transcription model named in the session"


def test_unpriced_transcription_model_is_null_with_reason():
    session = {"audio": {"input": {"transcription": {"model": "whisper-9"}}}}
    cost = session_cost(PRICES, "gpt-realtime", measured(session=session, transcriptions=(TRANSCRIPTION,)))
    assert (cost.usd, cost.reason) == (None, "the transcription model 'whisper-9' is not in the price list")


def test_no_usage_costs_exactly_zero_whatever_the_model():
    assert session_cost(PRICES, "gpt-unheard-of", Measurements()) == SessionCost(Decimal("0.000000"))


def test_rounding_half_up_to_a_millionth():
    assert round_usd(Decimal("0.0000005")) == Decimal("0.000001")
    assert round_usd(Decimal("0.00000049")) == Decimal("0.000000")
    assert usd_to_micros(Decimal("1.2345675")) == 1234568
    assert micros_to_usd(1234568) == Decimal("1.234568")
    # one audio output token of gpt-realtime: $64 / 1M = $0.000064 exactly
    usage = {"output_tokens": 1, "output_token_details": {"audio_tokens": 1}}
    assert session_cost(PRICES, "gpt-realtime", measured(usage)).usd == Decimal("0.000064")


def test_cached_tokens_without_breakdown_are_cached_text_then_audio():
    """A provider that gives ``cached_tokens`` without details: cached text
    first (up to the text tokens), then cached audio."""
    usage = {"input_tokens": 300, "input_token_details": {"text_tokens": 100, "audio_tokens": 200,
                                                          "cached_tokens": 150}}
    lines = {x.kind: x.quantity for x in session_cost(PRICES, "gpt-realtime", measured(usage)).lines}
    assert lines == {"cached_text_input": 100, "cached_audio_input": 50, "audio_input": 150}


def test_packaged_list_names_its_source_and_date():
    assert PRICES.read_on == "2026-12-07"
    for model in ("gpt-realtime", "gpt-realtime-mini", "gpt-4o-transcribe", "whisper-1"):
        assert PRICES.get(model).source.startswith("https://developers.openai.com/"), model
    assert PRICES.get("gpt-realtime").audio_input == Decimal("32.00")
    assert PRICES.get("gpt-realtime").cached_audio_input == Decimal("0.40")
    assert PRICES.get("gpt-realtime").audio_output == Decimal("64.00")
    assert PRICES.get("gpt-realtime").image_input == Decimal("5.00")
    assert PRICES.get("gpt-realtime-mini").audio_input == Decimal("10.00")


def test_overrides_replace_one_figure_and_follow_aliases():
    prices = PRICES.with_overrides({"gpt-realtime": {"audio_input": 30},
                                    "my-model": {"text_input": "1.5", "aliases": ["my-model-v2"]}})
    assert prices.get("gpt-realtime").audio_input == Decimal(30)
    assert prices.get("gpt-realtime").audio_output == Decimal("64.00")  # the rest stays
    assert prices.get("gpt-realtime-2025-08-28").audio_input == Decimal(30)
    assert prices.get("my-model-v2").text_input == Decimal("1.5")
    assert PRICES.get("gpt-realtime").audio_input == Decimal("32.00")  # the list itself unchanged
    # overriding a dated alias on its own leaves its model as it was
    split = PRICES.with_overrides({"gpt-realtime-2025-08-28": {"audio_input": 1}})
    assert split.get("gpt-realtime").audio_input == Decimal("32.00")
    assert split.get("gpt-realtime-2025-08-28").audio_input == Decimal(1)


@pytest.mark.parametrize("spec, message", [
    ({"audio_input": -1}, "must be a number ≥ 0"),
    ({"audio_input": "lots"}, "must be a number ≥ 0"),
    ({"audio_in": 1}, "unknown field 'audio_in'"),
    ({"aliases": "x"}, "aliases must be a list"),
])
def test_bad_overrides_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        PRICES.with_overrides({"m": spec})


def test_price_list_file_errors(tmp_path):
    bad = tmp_path / "prices.toml"
    bad.write_text('[models."m"]\ntext_input = 1\naliases = ["n"]\n[models."n"]\ntext_input = 2\n')
    with pytest.raises(ConfigError, match="'n' is listed twice"):
        load_prices(bad)
    bad.write_text('[models."m"]\ntext_inputs = 1\n')
    with pytest.raises(ConfigError, match="unknown fields"):
        load_prices(bad)
    with pytest.raises(ConfigError, match="cannot read price list"):
        load_prices(tmp_path / "missing.toml")


def test_price_list_reads_exact_decimals(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text('[models."m"]\ntext_input = 0.1\ntext_output = 0.2\n')
    prices = load_prices(path)
    assert prices.get("m").text_input + prices.get("m").text_output == Decimal("0.3")


def test_config_overrides(tmp_path):
    from voxgate.config import load_settings

    config = tmp_path / "voxgate.toml"
    config.write_text('[pricing]\nshow_provider_cost = true\n'
                      '[pricing.models."gpt-realtime"]\naudio_input = 0.1\n'
                      '[pricing.models."house-model"]\ntext_input = 2\ntext_output = 8\n')
    settings = load_settings(config)
    assert settings.pricing.show_provider_cost is True
    prices = settings.pricing.prices()
    assert prices.get("gpt-realtime").audio_input == Decimal("0.1")
    assert prices.get("house-model").text_output == Decimal(8)
    config.write_text('[pricing.models."x"]\naudio_input = -2\n')
    with pytest.raises(ConfigError):
        load_settings(config)


def test_transcription_model_in_both_session_shapes():
    assert transcription_model({"audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}}) \
        == "gpt-4o-transcribe"
    assert transcription_model({"input_audio_transcription": {"model": "whisper-1"}}) == "whisper-1"
    assert transcription_model({"audio": {"input": {"transcription": None}}}) is None
    assert transcription_model({}) is None


def test_every_packaged_price_is_a_decimal():
    for price in PRICES.models.values():
        for name in PRICE_FIELDS:
            value = price.price(name)
            assert value is None or isinstance(value, Decimal)
