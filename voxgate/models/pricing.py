"""What the voice provider charges the operator: a price list per model and
the provider cost of a session, in exact decimal arithmetic.

The price list is a TOML file (the packaged ``catalogs/prices.toml``, or
the operator's ``[pricing] price_list``), overridden or extended model by
model from ``[pricing.models."<model>"]`` in voxgate.toml. Each model has
USD prices per 1,000,000 tokens by kind (``text_input``,
``cached_text_input``, ``audio_input``, ``cached_audio_input``,
``image_input``, ``cached_image_input``, ``text_output``,
``audio_output``) and, for models billed by duration, ``audio_minute``
(USD per minute of audio). A price that is absent is unknown, never 0.

A session's provider cost follows OpenAI's Realtime billing
(https://developers.openai.com/api/docs/guides/realtime-costs):

- every ``response.done`` ``response.usage``, at the session's model
  price: ``input_token_details`` ``text_tokens`` / ``audio_tokens`` /
  ``image_tokens`` include the cached ones, which
  ``cached_tokens_details`` breaks down and which are billed at the cached
  price (cached tokens the provider does not break down are taken as
  cached text, then cached audio); ``output_token_details`` text and audio
  at the output prices. Usage is additive, so the sums the meter keeps
  (``Measurements``) cost the same as the responses one by one.
- input transcription (``conversation.item.input_audio_transcription.completed``
  ``usage``), billed at the transcription model's price rather than the
  realtime model's: ``{"type": "tokens"}`` usage by ``text_input`` /
  ``audio_input`` / ``text_output``, ``{"type": "duration", "seconds"}``
  by ``audio_minute``.

The total is rounded once, to 1e-6 USD (half up). A session that used a
kind of token its model has no price for, or whose model is not in the
list, costs ``None`` with the reason; a session that used no tokens at all
costs exactly 0 whatever its model.

No I/O but reading the price list file (``load_prices``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxgate.errors import ConfigError

if TYPE_CHECKING:
    from voxgate.models.sessions import Measurements

__all__ = ["ModelPrice", "PriceList", "CostLine", "SessionCost", "TRANSCRIPTION_FIELDS",
           "PRICE_FIELDS", "load_prices", "default_prices_path", "session_cost",
           "transcription_model", "round_usd", "usd_to_micros", "micros_to_usd", "MICRO_USD"]

PER_TOKENS = Decimal(1_000_000)
"""Token prices are per this many tokens."""
MICRO_USD = Decimal("0.000001")
"""The precision of a cost: costs are rounded to it (half up)."""

TOKEN_PRICE_FIELDS = ("text_input", "cached_text_input", "audio_input", "cached_audio_input",
                      "image_input", "cached_image_input", "text_output", "audio_output")
PRICE_FIELDS = (*TOKEN_PRICE_FIELDS, "audio_minute")
TRANSCRIPTION_FIELDS = ("input_text_tokens", "input_audio_tokens", "output_text_tokens", "seconds")
"""The keys of one transcription model's usage in ``Measurements.transcription``:
tokens (``{"type": "tokens"}`` usage) and seconds (``{"type": "duration"}``)."""
_MODEL_KEYS = {*PRICE_FIELDS, "aliases", "source"}


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's prices. Token prices in USD per 1,000,000 tokens,
    ``audio_minute`` in USD per minute of audio; None = not known (a
    session that used that kind of token gets no cost).

    Attributes:
        model: the model id it was listed under.
        source: where the figures were read (page, date).
    """

    model: str
    text_input: Decimal | None = None
    cached_text_input: Decimal | None = None
    audio_input: Decimal | None = None
    cached_audio_input: Decimal | None = None
    image_input: Decimal | None = None
    cached_image_input: Decimal | None = None
    text_output: Decimal | None = None
    audio_output: Decimal | None = None
    audio_minute: Decimal | None = None
    source: str = ""

    def price(self, name: str) -> Decimal | None:
        """The price named ``name`` (one of ``PRICE_FIELDS``)."""
        value: Decimal | None = getattr(self, name)
        return value


@dataclass(frozen=True, slots=True)
class PriceList:
    """Prices by model id (aliases included).

    Attributes:
        models: model id or alias → its prices.
        source: the file it was read from.
        read_on: the date its figures were read (``YYYY-MM-DD``), as the file says.
    """

    models: dict[str, ModelPrice]
    source: str = ""
    read_on: str = ""

    def get(self, model: str) -> ModelPrice | None:
        """The prices of ``model`` (exactly as named, aliases included), or None."""
        return self.models.get(model)

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> PriceList:
        """This list with ``overrides`` (model → ``{price name: value,
        "aliases": [...], "source": ...}``, as ``[pricing.models]`` in
        voxgate.toml) applied: a listed model's prices are replaced one by
        one (the others stay), a new model is added; values are exact
        decimals (``Decimal``, int, or a float/str read as written).

        Raises:
            ConfigError: an unknown key, or a price that is not a number ≥ 0.
        """
        models = dict(self.models)
        for model, spec in overrides.items():
            base = models.get(model) or ModelPrice(model)
            changes: dict[str, Any] = {}
            for name, value in spec.items():
                if value is None:
                    continue
                if name not in _MODEL_KEYS:
                    raise ConfigError(f"price of {model!r}: unknown field {name!r} "
                                      f"(known: {', '.join(PRICE_FIELDS)}, aliases, source)")
                if name in PRICE_FIELDS:
                    changes[name] = _decimal(value, f"price of {model!r}: {name}")
                elif name == "source":
                    changes[name] = str(value)
            price = replace(base, model=model, source=changes.pop("source", base.source or "voxgate.toml"),
                            **changes)
            old = models.get(model)
            if old is not None and old.model == model:  # a listed model: its aliases follow it
                for name, other in list(models.items()):
                    if other is old:
                        models[name] = price
            models[model] = price  # (an alias overridden on its own leaves its model as it was)
            for alias in _aliases(spec.get("aliases"), model):
                models[alias] = price
        return PriceList(models, self.source, self.read_on)


@dataclass(frozen=True, slots=True)
class CostLine:
    """One line of a session's provider cost.

    Attributes:
        model: the model whose price applies (the session's, or its
            transcription model's).
        kind: the price's name (``audio_input``, ``audio_minute``, ...).
        quantity: tokens (token prices) or minutes (``audio_minute``).
        unit_usd: the price: USD per 1,000,000 tokens, or per minute.
        amount_usd: quantity × price, exact (not rounded).
    """

    model: str
    kind: str
    quantity: Decimal
    unit_usd: Decimal
    amount_usd: Decimal


@dataclass(frozen=True, slots=True)
class SessionCost:
    """A session's provider cost.

    Attributes:
        usd: the total in USD, rounded to 1e-6; None when some usage has no
            price (``reason`` says which).
        reason: why ``usd`` is None (None when it is known).
        lines: the priced lines (tokens or minutes × price), the nonzero ones.
    """

    usd: Decimal | None
    reason: str | None = None
    lines: tuple[CostLine, ...] = field(default=())

    @property
    def micros(self) -> int | None:
        """``usd`` in millionths of a dollar (exact), None when unpriced."""
        return None if self.usd is None else usd_to_micros(self.usd)


class _Unpriced(Exception):
    """Usage with no price: the message is the reason."""


def round_usd(amount: Decimal) -> Decimal:
    """``amount`` rounded to 1e-6 USD, half up."""
    return amount.quantize(MICRO_USD, rounding=ROUND_HALF_UP)


def usd_to_micros(usd: Decimal) -> int:
    """A cost in USD (a multiple of 1e-6 once rounded) as whole millionths."""
    return int(round_usd(usd) * 1_000_000)


def micros_to_usd(micros: int) -> Decimal:
    """Whole millionths of a dollar as USD (``Decimal``, 6 places)."""
    return (Decimal(micros) / 1_000_000).quantize(MICRO_USD)


def transcription_model(session: Mapping[str, Any]) -> str | None:
    """The input transcription model a Realtime session object names: GA
    ``audio.input.transcription.model``, beta
    ``input_audio_transcription.model``; None when it names none."""
    audio = session.get("audio")
    if isinstance(audio, dict):
        inp = audio.get("input")
        if isinstance(inp, dict):
            model = _model_of(inp.get("transcription"))
            if model is not None:
                return model
    return _model_of(session.get("input_audio_transcription"))


def session_cost(prices: PriceList, model: str, m: Measurements) -> SessionCost:
    """The provider cost of a session on ``model`` with the usage sums
    ``m`` (``response.done`` token sums by kind and the input transcription
    usage by transcription model; see the module docstring).

    Returns ``SessionCost(None, reason)`` when some usage has no price: the
    model (or a transcription model) is not in ``prices``, or it has no
    price for a kind of token the session used.
    """
    lines: list[CostLine] = []
    try:
        lines += _response_lines(prices, model, m)
        for asr_model, usage in sorted(m.transcription.items()):
            lines += _transcription_lines(prices, asr_model, usage)
    except _Unpriced as exc:
        return SessionCost(None, str(exc))
    with localcontext() as ctx:
        ctx.prec = 60
        total = sum((line.amount_usd for line in lines), Decimal(0))
    return SessionCost(round_usd(total), None, tuple(lines))


# ---------------------------------------------------------------- the lines

def _response_lines(prices: PriceList, model: str, m: Measurements) -> list[CostLine]:
    text, audio, image = m.input_text_tokens, m.input_audio_tokens, m.input_image_tokens
    c_text, c_audio, c_image = m.cached_text_tokens, m.cached_audio_tokens, m.cached_image_tokens
    # cached tokens without a breakdown: cached text first, then cached audio
    rest = max(0, m.cached_tokens - c_text - c_audio - c_image)
    take = min(rest, max(0, text - c_text))
    c_text, rest = c_text + take, rest - take
    c_audio += min(rest, max(0, audio - c_audio))
    counts = {
        "text_input": max(0, text - c_text), "cached_text_input": c_text,
        "audio_input": max(0, audio - c_audio), "cached_audio_input": c_audio,
        "image_input": max(0, image - c_image), "cached_image_input": c_image,
        "text_output": m.output_text_tokens, "audio_output": m.output_audio_tokens,
    }
    # output tokens the provider did not break down by modality: text
    counts["text_output"] += max(0, m.output_tokens - m.output_text_tokens - m.output_audio_tokens)
    if sum(counts.values()) == 0 and m.input_tokens == 0:
        return []
    if sum(counts.values()) == 0:  # totals without any details
        counts["text_input"] = m.input_tokens
    return _token_lines(prices, model, counts, what="the session's model")


def _transcription_lines(prices: PriceList, model: str,
                         usage: Mapping[str, float]) -> list[CostLine]:
    counts = {"text_input": int(usage.get("input_text_tokens", 0)),
              "audio_input": int(usage.get("input_audio_tokens", 0)),
              "text_output": int(usage.get("output_text_tokens", 0))}
    seconds = Decimal(str(usage.get("seconds", 0) or 0))
    if not any(counts.values()) and not seconds:
        return []
    if not model:
        raise _Unpriced("input transcription usage without a transcription model named in "
                        "the session")
    lines = _token_lines(prices, model, counts, what="the transcription model") if any(
        counts.values()) else []
    if seconds:
        price = _price_of(prices, model, "the transcription model")
        unit = price.audio_minute
        if unit is None:
            raise _Unpriced(f"no audio_minute price for transcription model {model!r} "
                            f"({_fmt(seconds)} s of audio billed by duration)")
        minutes = seconds / 60
        lines.append(CostLine(model, "audio_minute", minutes, unit, minutes * unit))
    return lines


def _token_lines(prices: PriceList, model: str, counts: Mapping[str, int],
                 what: str) -> list[CostLine]:
    price = _price_of(prices, model, what)
    lines = []
    for kind, n in counts.items():
        if n <= 0:
            continue
        unit = price.price(kind)
        if unit is None:
            raise _Unpriced(f"no {kind} price for model {model!r} ({n:,} tokens used)")
        quantity = Decimal(n)
        lines.append(CostLine(model, kind, quantity, unit, quantity * unit / PER_TOKENS))
    return lines


def _price_of(prices: PriceList, model: str, what: str) -> ModelPrice:
    price = prices.get(model)
    if price is None:
        raise _Unpriced(f"{what} {model!r} is not in the price list"
                        if model else f"{what} is not known")
    return price


# ---------------------------------------------------------------- loading

def default_prices_path() -> Path:
    """The packaged price list, ``voxgate/models/catalogs/prices.toml``."""
    return Path(str(resources.files("voxgate.models") / "catalogs" / "prices.toml"))


def load_prices(path: str | Path | None = None,
                overrides: Mapping[str, Mapping[str, Any]] | None = None) -> PriceList:
    """Read a price list TOML file (the packaged one when ``path`` is None;
    numbers read as exact decimals), then apply ``overrides``
    (``PriceList.with_overrides``).

    Raises:
        ConfigError: unreadable file, an unknown field, a price that is not
            a number ≥ 0, an alias naming another listed model.
    """
    path = Path(path) if path else default_prices_path()
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(), parse_float=Decimal)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read price list {path}: {exc}") from exc
    models: dict[str, ModelPrice] = {}
    table = raw.get("models") or {}
    if not isinstance(table, dict):
        raise ConfigError(f"price list {path}: [models] must be a table of models")
    for model, spec in table.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"price list {path}: models.{model} must be a table")
        unknown = set(spec) - _MODEL_KEYS
        if unknown:
            raise ConfigError(f"price list {path}: model {model!r}: unknown fields {sorted(unknown)}")
        values = {name: _decimal(spec[name], f"price list {path}: model {model!r}: {name}")
                  for name in PRICE_FIELDS if name in spec}
        price = ModelPrice(model, source=str(spec.get("source", "")), **values)
        for name in (model, *_aliases(spec.get("aliases"), model)):
            if name in models:
                raise ConfigError(f"price list {path}: model {name!r} is listed twice")
            models[name] = price
    prices = PriceList(models, str(path), str(raw.get("read_on", "")))
    return prices.with_overrides(overrides) if overrides else prices


def _aliases(value: Any, model: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
        raise ConfigError(f"price of {model!r}: aliases must be a list of model ids")
    return list(value)


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ConfigError(f"{what} must be a number ≥ 0 (USD), not {value!r}")
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation as exc:
        raise ConfigError(f"{what} must be a number ≥ 0 (USD), not {value!r}") from exc
    if not number.is_finite() or number < 0:
        raise ConfigError(f"{what} must be a number ≥ 0 (USD), not {value!r}")
    return number


def _model_of(value: Any) -> str | None:
    if isinstance(value, dict):
        model = value.get("model")
        if isinstance(model, str) and model:
            return model
    return None


def _fmt(seconds: Decimal) -> str:
    return format(seconds.normalize(), "f")
