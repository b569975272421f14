"""Configuration: embedded defaults, a TOML file, then environment overrides.

Precedence, highest first: environment (``VOXGATE_<FIELD>``, nested with
``__``, e.g. ``VOXGATE_RELAY__IDLE_TIMEOUT_S=30``; ``OPENAI_API_KEY``,
``OPENAI_WEBHOOK_SECRET``, ``STRIPE_SECRET_KEY`` and ``STRIPE_WEBHOOK_SECRET``
also work bare), the TOML
file (``--config FILE``, else ``$VOXGATE_CONFIG``, else ``./voxgate.toml`` if
present), then the defaults below. ``voxgate.example.toml`` documents every
field.
"""

from __future__ import annotations

import os
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from voxgate.errors import ConfigError
from voxgate.models.origins import is_loopback
from voxgate.models.pricing import PriceList, load_prices

__all__ = [
    "Settings",
    "UpstreamSettings",
    "VoiceSettings",
    "RelaySettings",
    "PolicySettings",
    "TokenSettings",
    "WebRTCSettings",
    "BillingSettings",
    "SmtpSettings",
    "WebSettings",
    "JobSettings",
    "DatabaseSettings",
    "RetentionSettings",
    "PricingSettings",
    "ModelPriceSettings",
    "SipSettings",
    "SipRouteSettings",
    "TelephonySettings",
    "load_settings",
]


class UpstreamSettings(BaseModel):
    """Where sessions are relayed to.

    ``provider``: ``local`` (the embedded voice provider) or ``openai``.
    ``url``: the provider's realtime WebSocket URL without query
    (default: the embedded provider, or ``wss://api.openai.com/v1/realtime``).
    ``allowed_models``: the only models any session may use (empty = any; a
    project may narrow it further).
    ``provider_key_secret``: Fernet key(s) that encrypt the provider keys
    customers bring for their projects (BYOK); unset disables BYOK.
    """

    provider: Literal["local", "openai"] = "local"
    url: str = ""
    default_model: str = "gpt-realtime"
    allowed_models: list[str] = Field(default_factory=list)
    openai_api_key: SecretStr | None = None
    connect_timeout_s: float = 10.0
    # Fernet key(s), comma separated, encrypting projects' own provider keys
    # (BYOK, voxgate.proxy.provider_keys); unset = BYOK disabled.
    provider_key_secret: SecretStr | None = None


class VoiceSettings(BaseModel):
    """The local OpenAI-compatible voice provider (``voxgate.voice``).

    ``port`` 0 picks a free loopback port when embedded. ``responder`` is
    ``assistant`` (deterministic, answers from the transcript), ``echo``
    (sends each audio chunk straight back, no STT/TTS) or ``chat`` (any
    OpenAI-compatible chat-completions endpoint at ``chat_url``).
    ``faults_enabled`` lets sessions request injected faults (tests, load tests).
    """

    host: str = "127.0.0.1"
    port: int = 0
    responder: Literal["assistant", "echo", "chat"] = "assistant"
    chat_url: str = ""
    chat_model: str = "llama3.2"
    chat_api_key: SecretStr | None = None
    faults_enabled: bool = False
    workers: int = 1  # processes for STT/TTS


class RelaySettings(BaseModel):
    """WebSocket relay limits. Sizes in bytes, times in seconds."""

    max_message_bytes: int = 4 * 1024 * 1024
    idle_timeout_s: float = 300.0
    max_session_s: float = 3600.0
    ping_interval_s: float = 20.0


class PolicySettings(BaseModel):
    """The billable-verdict policy: "only pay for successful sessions"."""

    min_audio_s: float = 5.0
    max_connect_ms: float = 2000.0
    min_text_responses: int = 1  # a text session (responses without audio) needs this many completed
    # "any": any provider error makes the session free; "before_threshold": only if the
    # billable threshold had not been met before the first one (docs/metering.md)
    provider_error: Literal["any", "before_threshold"] = "any"


class TokenSettings(BaseModel):
    """Ephemeral client secrets lifetimes, in seconds."""

    default_ttl_s: int = 600
    min_ttl_s: int = 10
    max_ttl_s: int = 7200


class WebRTCSettings(BaseModel):
    """WebRTC calls (``POST /v1/realtime/calls``).

    ``host_addresses``: the only addresses voxgate gathers host ICE candidates
    on (empty = all interfaces). ``public_address``: announced instead of the
    host address behind 1:1 NAT. ``stun_url``: optional. ``turn_*``: a TURN
    server (coturn ``static-auth-secret``) used by voxgate and handed to clients.
    ``ice_transport_policy``: ``relay`` makes voxgate's own connections use
    only its TURN allocation. ``consent_grace_s``: how long a connected client
    may send nothing at all (no STUN, DTLS, RTP/RTCP or SCTP datagram), or ICE
    stay failed/disconnected, before the call is ended.
    Times in seconds.
    """

    host_addresses: list[str] = Field(default_factory=list)
    public_address: str = ""
    stun_url: str = ""
    turn_urls: list[str] = Field(default_factory=list)
    turn_secret: SecretStr | None = None
    turn_ttl_s: int = 3600
    ice_timeout_s: float = 15.0
    ice_transport_policy: Literal["all", "relay"] = "all"
    consent_grace_s: float = 3.0


class BillingSettings(BaseModel):
    """Stripe. ``api_base`` points the SDK at a test server (localstripe)."""

    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    api_base: str = ""
    meter_event_name: str = "voxgate_billable_sessions"
    settlement_mode: Literal["meter_events", "invoice_items"] = "meter_events"
    success_url: str = "http://127.0.0.1:8080/billing?checkout=success&session_id={CHECKOUT_SESSION_ID}"
    cancel_url: str = "http://127.0.0.1:8080/billing?checkout=cancel"
    portal_return_url: str = "http://127.0.0.1:8080/billing"
    grace_period_days: int = 7
    settle_interval_s: float = 5.0
    currency: str = "usd"
    retry_base_s: float = 5.0  # first retry delay of the outboxes; doubles per attempt
    retry_max_s: float = 3600.0  # longest delay between two attempts
    # A settlement a worker claimed is left to it this long (past Stripe's
    # timeouts); if it dies meanwhile, any worker retries it after that.
    claim_lease_s: float = 300.0
    grace_check_interval_s: float = 600.0  # how often past-due accounts are checked
    # POST /webhooks/stripe is unauthenticated until its signature is checked:
    # at most this many requests per minute from one address (Stripe sends far fewer).
    webhook_ip_limit_per_min: int = 600


class SmtpSettings(BaseModel):
    """Outgoing mail (quota alerts, welcome, notices). Empty host = keep the
    queue, send nothing."""

    host: str = ""
    port: int = 25
    username: str = ""
    password: SecretStr | None = None
    sender: str = "voxgate <noreply@voxgate.local>"
    starttls: bool = False
    use_tls: bool = False  # implicit TLS (port 465)
    timeout_s: float = 10.0
    send_interval_s: float = 5.0  # how often the email outbox is drained


class WebSettings(BaseModel):
    """Dashboard. ``session_secret`` signs cookies (generated into the data
    directory when empty). ``secure_cookies``: mark cookies ``Secure`` (also
    on whenever ``public_url`` is https). ``demo_page``: serve the demo-key
    route for the browser voice client: None follows ``demo`` (loopback
    only by default), true forces it on, false off."""

    session_secret: SecretStr | None = None
    secure_cookies: bool = False
    demo_page: bool | None = None


class JobSettings(BaseModel):
    """The scheduled jobs (``voxgate.jobs``). Times in seconds.

    ``enabled``: run the scheduler in this process (every process may: each
    run is claimed by one of them). ``poll_s``: how often the scheduler looks
    for due jobs. ``lease_s``: how long a claimed run may take before another
    process may take it over. ``retry_s``: how soon a failed run is tried
    again (at most its interval). ``intervals_s``: per job name, replaces the
    job's own interval. ``stale_session_s``: an ``active`` session started
    longer ago than this is taken as left by a dead process (default: one
    ``relay.max_session_s`` plus ten minutes, when 0).
    """

    enabled: bool = True
    poll_s: float = 10.0
    lease_s: float = 600.0
    retry_s: float = 300.0
    intervals_s: dict[str, float] = Field(default_factory=dict)
    stale_session_s: float = 0.0


class RetentionSettings(BaseModel):
    """How long rows nobody needs any more are kept, pruned by the
    housekeeping jobs (``voxgate.jobs``, docs/jobs.md).

    ``outbox_days``: sent emails and delivered customer webhooks are deleted
    this many days after they went out (0 = kept for ever).
    ``webhook_payload_days``: a processed Stripe event's payload is emptied
    this many days after it was processed; the event's row (its id, type,
    times) stays, so a replay is still recognized (0 = kept for ever).
    ``ephemeral_key_grace_s``: an expired ephemeral key is deleted this many
    seconds after it expired (until then using it says "expired").
    ``batch_size``: rows per statement (each a short transaction of its
    own); ``max_batches``: statements per job run at most (a larger backlog
    is taken up by the next runs).
    """

    outbox_days: float = Field(default=30.0, ge=0)
    webhook_payload_days: float = Field(default=30.0, ge=0)
    ephemeral_key_grace_s: float = Field(default=86400.0, ge=0)
    batch_size: int = Field(default=500, ge=1)
    max_batches: int = Field(default=100, ge=1)


class ModelPriceSettings(BaseModel):
    """One model's provider prices in ``[pricing.models."<model>"]``: USD
    per 1,000,000 tokens of each kind, ``audio_minute`` USD per minute of
    audio (duration-billed transcription); each replaces the price list's
    figure of that name (the others stay). ``aliases``: other model ids
    billed the same. See ``voxgate.models.pricing``."""

    model_config = ConfigDict(extra="forbid")

    text_input: Decimal | None = Field(default=None, ge=0)
    cached_text_input: Decimal | None = Field(default=None, ge=0)
    audio_input: Decimal | None = Field(default=None, ge=0)
    cached_audio_input: Decimal | None = Field(default=None, ge=0)
    image_input: Decimal | None = Field(default=None, ge=0)
    cached_image_input: Decimal | None = Field(default=None, ge=0)
    text_output: Decimal | None = Field(default=None, ge=0)
    audio_output: Decimal | None = Field(default=None, ge=0)
    audio_minute: Decimal | None = Field(default=None, ge=0)
    aliases: list[str] = Field(default_factory=list)
    source: str | None = None


class PricingSettings(BaseModel):
    """What the voice provider charges the operator (``[pricing]``), for
    each session's ``provider_cost_usd`` (``voxgate.models.pricing``).

    ``price_list``: a price list TOML file replacing the packaged one
    (``voxgate/models/catalogs/prices.toml``). ``models``: per model,
    prices that override or extend it. ``show_provider_cost``: customers
    see their sessions' provider cost (``GET /v1/sessions``, receipts, CSV
    export); by default only operators do.
    """

    price_list: Path | None = None
    show_provider_cost: bool = False
    models: dict[str, ModelPriceSettings] = Field(default_factory=dict)

    def prices(self) -> PriceList:
        """The price list: ``price_list`` (or the packaged one) with
        ``models`` applied.

        Raises:
            ConfigError: the file is unreadable or invalid.
        """
        overrides = {model: spec.model_dump(exclude_none=True) for model, spec in self.models.items()}
        return load_prices(self.price_list, overrides)


class SipRouteSettings(BaseModel):
    """One ``[[sip.routes]]`` entry: which voxgate project an OpenAI SIP
    call belongs to (``voxgate.proxy.telephony.sip``, docs/telephony-sip.md).

    A call matches when its ``sip_headers`` carry ``header`` with exactly
    ``value`` (header names ignore case), or, with ``number``, when the
    called number (the user part of the ``To`` URI, separators ignored) is
    ``number`` (E.164, ``+18005551212``). ``model``: the call's model (else
    ``upstream.default_model``, narrowed by the project's allowed models).
    ``session``: the session config of the accept (``instructions``,
    ``audio``, ``tools``, ...; ``type`` and ``model`` are set by voxgate).
    """

    model_config = ConfigDict(extra="forbid")

    project_id: str
    number: str = ""
    header: str = ""
    value: str = ""
    model: str = ""
    session: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_match(self) -> SipRouteSettings:
        if bool(self.number) == bool(self.header):
            raise ValueError(f"sip route of project {self.project_id!r}: set either number "
                             "or header (with value)")
        if self.header and not self.value:
            raise ValueError(f"sip route of project {self.project_id!r}: header needs a value")
        return self


class SipSettings(BaseModel):
    """OpenAI SIP calls (``[sip]``; ``POST /v1/telephony/openai/webhook``).

    ``openai_webhook_secret``: the OpenAI project webhook's signing secret
    (``whsec_…``; also ``OPENAI_WEBHOOK_SECRET`` bare); unset = the webhook
    answers 503. ``tolerance_s``: how far a delivery's ``webhook-timestamp``
    may be from now, seconds. ``routes``: call → project, first match wins.
    ``control_timeout_s``: each call-control request to OpenAI (accept,
    reject, refer, hangup), seconds.
    """

    openai_webhook_secret: SecretStr | None = None
    tolerance_s: int = Field(default=300, ge=1)
    control_timeout_s: float = Field(default=10.0, gt=0)
    routes: list[SipRouteSettings] = Field(default_factory=list)


class TelephonySettings(BaseModel):
    """Twilio Media Streams (``[telephony]``; ``GET /v1/telephony/twilio``,
    docs/telephony.md). ``twilio_auth_token``: the Twilio account's auth
    token; when set, every stream's WebSocket upgrade must carry Twilio's
    ``X-Twilio-Signature`` for its URL (else HTTP 403)."""

    twilio_auth_token: SecretStr | None = None


class DatabaseSettings(BaseModel):
    """PostgreSQL's connection pool (``[database]``; SQLite has one
    connection). Lanes (docs/database.md): ``session_connections`` for the
    session hot path, one connection for heartbeats and checkpoints,
    ``background_connections`` for jobs, dashboard and settlement.
    Timeouts in seconds, set on every connection (PostgreSQL's
    ``lock_timeout`` and ``statement_timeout``): a statement past them fails
    (a 503, or a retry on the session path) instead of holding a connection
    for ever; ``heartbeat_timeout_s`` is both for the heartbeat connection.
    ``acquire_timeout_s``: how long a call waits for a free connection of
    its lane (then 503)."""

    session_connections: int = Field(default=4, ge=1)
    background_connections: int = Field(default=2, ge=1)
    lock_timeout_s: float = Field(default=5.0, gt=0)
    statement_timeout_s: float = Field(default=15.0, gt=0)
    background_statement_timeout_s: float = Field(default=60.0, gt=0)
    heartbeat_timeout_s: float = Field(default=2.0, gt=0)
    acquire_timeout_s: float = Field(default=10.0, gt=0)


class Settings(BaseSettings):
    """All of voxgate's settings. See the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix="VOXGATE_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""  # base URL users reach voxgate at (links in emails)
    data_dir: Path = Path("data")
    database_url: str = ""  # default sqlite:///<data_dir>/voxgate.db
    # Apply pending schema migrations at start. false: a start with pending
    # migrations is refused (run ``voxgate migrate`` first, e.g. from a deploy step).
    auto_migrate: bool = True
    catalog: Path | None = None  # plan catalog TOML; default: the packaged one
    # Admission state (leases, rate buckets): "" = in this process; "redis://…" =
    # shared by every voxgate process using that Redis.
    admission_url: str = ""
    admission_prefix: str = "voxgate:"  # its Redis keys' prefix (deployments sharing one Redis)
    lease_ttl_s: float = 90.0  # a concurrency lease not renewed for this long is freed
    # Connections to Redis per process at most; a burst waits up to
    # redis_pool_timeout_s for a free one (then 503), instead of failing at once.
    redis_max_connections: int = Field(default=50, ge=1)
    redis_pool_timeout_s: float = Field(default=5.0, gt=0)
    # SIGTERM: live sessions may go on this long (s) before they are closed (1001).
    drain_timeout_s: float = Field(default=30.0, ge=0)
    # This process in the ``instances`` table: its active sessions name it. "" =
    # host:pid:random (a new identity each start); set a stable id (e.g. the
    # container or unit name) so that a restart frees its previous run's leases at once.
    instance_id: str = ""
    # How often this process beats (s); each beat also checkpoints its live
    # sessions' measurements, so at most 10 s of a lost instance's sessions is unrecorded.
    # Live sessions survive a database stall of up to heartbeat_ttl_s -
    # heartbeat_interval_s - fence_margin_s (23 s by default) without being fenced.
    heartbeat_interval_s: float = Field(default=5.0, gt=0, le=10.0)
    # An instance whose heartbeat is older than this is dead: its sessions are
    # completed from their last checkpoint by a live one (instance_sweep job);
    # their leases expire after lease_ttl_s. More than two intervals, so one late
    # beat does not kill live sessions.
    heartbeat_ttl_s: float = Field(default=30.0, gt=0)
    # Fencing: this process relays a session only until (its last lease renewal
    # + lease_ttl_s) and (its last heartbeat + heartbeat_ttl_s), each timed when
    # the call was sent, minus this margin (s), capped at a tenth of the shorter TTL.
    fence_margin_s: float = Field(default=2.0, ge=0)
    log_level: str = "INFO"
    # Development mode: customer webhook URLs may be http and may point at
    # loopback or private addresses. Never in production.
    dev_mode: bool = False
    # The demo account, its dashboard login and the browser demo-key route:
    # None = only when voxgate listens on loopback (``host``); true/false forces.
    demo: bool | None = None
    log_format: Literal["text", "json"] = "text"  # "json": one object per line (voxgate.logs)

    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    voice: VoiceSettings = Field(default_factory=VoiceSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    tokens: TokenSettings = Field(default_factory=TokenSettings)
    webrtc: WebRTCSettings = Field(default_factory=WebRTCSettings)
    billing: BillingSettings = Field(default_factory=BillingSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    pricing: PricingSettings = Field(default_factory=PricingSettings)
    sip: SipSettings = Field(default_factory=SipSettings)
    telephony: TelephonySettings = Field(default_factory=TelephonySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats the TOML file, which is passed as init kwargs.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _heartbeat_outlives_beats(self) -> Settings:
        if self.heartbeat_ttl_s <= 2 * self.heartbeat_interval_s:
            raise ValueError(f"heartbeat_ttl_s ({self.heartbeat_ttl_s}) must be more than twice "
                             f"heartbeat_interval_s ({self.heartbeat_interval_s})")
        return self

    @property
    def demo_enabled(self) -> bool:
        """Whether the demo account, login and demo-key route exist."""
        if self.demo is not None:
            return self.demo
        return is_loopback(self.host)

    @property
    def sqlite_path(self) -> Path:
        url = self.database_url
        if url.startswith("sqlite:///"):
            return Path(url[len("sqlite:///"):])
        return self.data_dir / "voxgate.db"

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"


_BARE_ENV = {
    "OPENAI_API_KEY": ("upstream", "openai_api_key"),
    "STRIPE_SECRET_KEY": ("billing", "stripe_secret_key"),
    "STRIPE_WEBHOOK_SECRET": ("billing", "stripe_webhook_secret"),
    "OPENAI_WEBHOOK_SECRET": ("sip", "openai_webhook_secret"),
}


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from the TOML file (if any), the environment and
    ``overrides`` (highest precedence; used by the CLI and tests).

    Raises:
        ConfigError: unreadable TOML, unknown or invalid fields.
    """
    path = config or os.environ.get("VOXGATE_CONFIG")
    if not path and Path("voxgate.toml").is_file():
        path = "voxgate.toml"
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    for env, (section, key) in _BARE_ENV.items():
        if os.environ.get(env) and not os.environ.get(f"VOXGATE_{section.upper()}__{key.upper()}"):
            data.setdefault(section, {})[key] = os.environ[env]
    try:
        settings = Settings(**data)
        if overrides:
            settings = _merge(settings, overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
    return settings


def _merge(settings: Settings, overrides: dict[str, Any]) -> Settings:
    merged = settings.model_dump()
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    # SecretStr values dump as SecretStr objects; model_validate accepts them.
    return Settings.model_validate(merged)
