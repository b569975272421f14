"""The store interface (``Store``) and its records: accounts, projects,
keys, sessions, monthly usage, the settlement outbox and instances.

``voxgate.store.sql.SQLStore`` implements it on SQLite and PostgreSQL (a
dialect object each, ``voxgate.store.dialects``); the other rooms' queries
are in ``voxgate.store.queries``. All times are Unix seconds; periods are
``"YYYY-MM"`` in UTC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from voxgate.models import (
    Account,
    AdminKey,
    ApiKey,
    EphemeralKey,
    Measurements,
    Project,
    SessionRecord,
    Verdict,
)
from voxgate.models.packs import AccountPack, PackBalance

__all__ = ["Store", "MonthlyUsage", "SessionFilter", "period_of", "OutboxItem", "Instance", "Orphan"]


def period_of(ts: float | None = None) -> str:
    """The usage period (``"YYYY-MM"``, UTC) holding Unix time ``ts`` (now if None)."""
    return time.strftime("%Y-%m", time.gmtime(time.time() if ts is None else ts))


@dataclass(slots=True)
class MonthlyUsage:
    """An account's usage in one period.

    Attributes:
        sessions: sessions completed in the period (any verdict).
        billable_sessions: billable ones (what the quota counts).
        minutes_used: sum of billable session durations, in minutes, unrounded
            (shown everywhere through ``voxgate.models.figures.minutes_used``).
        audio_seconds: audio exchanged (in + out), in seconds.
        bytes: message bytes relayed, both directions.
    """

    account_id: str
    period: str
    sessions: int = 0
    billable_sessions: int = 0
    minutes_used: float = 0.0
    audio_seconds: float = 0.0
    bytes: int = 0


@dataclass(slots=True)
class SessionFilter:
    """Filters for listing sessions; None = any."""

    project_id: str | None = None
    billable: bool | None = None
    reason: str | None = None
    since: float | None = None  # started_at ≥ since
    until: float | None = None  # started_at < until
    status: str | None = None


@dataclass(slots=True)
class OutboxItem:
    """A billable session waiting to be settled with Stripe (a meter event
    whose ``identifier`` is the session id)."""

    session_id: str
    account_id: str
    period: str
    created_at: float
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Instance:
    """A voxgate process sharing the database (``instances`` row): its id
    (``Settings.instance_id``), host name, pid, when it started and when it
    last sent its heartbeat (Unix s), and the epoch of its registration (a
    new one each time the id registers; a heartbeat counts only for the
    epoch it names)."""

    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Orphan:
    """An active session whose instance is gone (declared dead by a
    sweeper, or a previous run of the same instance id): its id, account
    and admission lease id (None for a session opened without one), and its
    record as last checkpointed (``record.measurements`` as of
    ``checkpoint_at``, Unix s; None = never checkpointed: the measurements
    of the row as opened)."""

    session_id: str
    account_id: str
    lease_id: str | None
    record: SessionRecord | None = None
    checkpoint_at: float | None = None


class Store(Protocol):
    """Persistence for everything voxgate meters. Every method is a coroutine.

    Errors: ``KeyError`` for unknown ids where a method says so; nothing else
    is raised for ordinary input.
    """

    async def open(self) -> None:
        """Connect and apply pending migrations."""

    async def close(self) -> None: ...
    async def ping(self) -> None:
        """One trivial query; raises the database's error when it cannot answer
        (for readiness checks)."""


    # accounts, projects, keys
    async def create_account(self, email: str, plan_id: str, *, name: str = "") -> Account: ...
    async def get_account(self, account_id: str) -> Account | None: ...
    async def get_account_by_email(self, email: str) -> Account | None: ...
    async def list_accounts(self) -> list[Account]: ...
    async def update_account(self, account_id: str, **fields: Any) -> Account:
        """Set fields of the account (``plan_id``, ``status``,
        ``stripe_customer_id``, ``stripe_subscription_id``,
        ``past_due_since``, ``name``, ``email``). Raises KeyError if unknown."""

    async def create_project(self, account_id: str, name: str) -> Project: ...
    async def get_project(self, project_id: str) -> Project | None: ...
    async def list_projects(self, account_id: str) -> list[Project]: ...
    async def delete_project(self, project_id: str) -> None:
        """Delete the project and revoke its keys (sessions stay)."""

    async def set_project_provider_key(self, project_id: str, sealed: str | None,
                                       last4: str | None) -> Project:
        """Store the project's own provider key (BYOK), encrypted (``sealed``:
        a Fernet token, ``voxgate.proxy.provider_keys``) with its last 4
        characters, or remove it (both None). Raises KeyError if the project
        is unknown or deleted."""

    async def set_project_twilio_token(self, project_id: str, sealed: str | None,
                                       last4: str | None) -> Project:
        """Store the project's own Twilio auth token, encrypted (``sealed``:
        a Fernet token, ``voxgate.proxy.provider_keys``) with its last 4
        characters, or remove it (both None). Raises KeyError if the project
        is unknown or deleted."""

    async def update_project(
        self,
        project_id: str,
        *,
        allowed_origins: tuple[str, ...] | None = None,
        allowed_models: tuple[str, ...] | None = None,
        allowed_ips: tuple[str, ...] | None = None,
    ) -> Project:
        """Replace the project's pins that are given: the web origins its
        ephemeral keys may be used from (normalized, see
        ``voxgate.models.origins``), the models its sessions may use, the
        client networks (CIDR) its API keys may be used from; empty = any.
        Raises KeyError if the project is unknown or deleted."""

    async def audit(self, actor: str, action: str, account_id: str | None,
                    detail: dict[str, Any] | None = None) -> None:
        """Append to the audit log (``actor`` e.g. ``cli:root``)."""

    async def create_admin_key(self, account_id: str, name: str = "") -> tuple[AdminKey, str]:
        """A new account admin key: (stored record, the plaintext shown once)."""

    async def list_admin_keys(self, account_id: str) -> list[AdminKey]: ...
    async def revoke_admin_key(self, key_id: str) -> None: ...
    async def find_admin_key(self, plaintext: str) -> tuple[AdminKey, Account] | None:
        """The admin key and its account; revoked ones too (``active`` tells)."""

    async def create_api_key(self, project_id: str, name: str = "") -> tuple[ApiKey, str]:
        """A new key for the project: (stored record, the plaintext key shown once)."""

    async def list_api_keys(self, project_id: str) -> list[ApiKey]: ...
    async def revoke_api_key(self, key_id: str) -> None: ...
    async def find_api_key(self, plaintext: str) -> tuple[ApiKey, Project, Account] | None:
        """Look a key up by its hash; None if unknown. Revoked keys are returned
        (the caller refuses them with a precise message)."""

    async def create_ephemeral_key(
        self,
        project_id: str,
        session: dict[str, Any],
        expires_at: float,
        api_key_id: str | None = None,
    ) -> tuple[EphemeralKey, str]:
        """Mint an ephemeral key: (stored record, plaintext ``ek_…``)."""

    async def find_ephemeral_key(
        self, plaintext: str
    ) -> tuple[EphemeralKey, Project, Account] | None: ...

    # instances (the processes sharing the database)
    instance_id: str | None

    async def register_instance(self, instance_id: str, host: str, pid: int,
                                now: float) -> tuple[int, list[Orphan]]:
        """Record this process as ``instance_id`` under a new epoch
        (heartbeat at ``now``) and open this store's sessions under it from
        now on. Returns (the epoch, the sessions still active under that id
        with their last checkpoints): left by a previous run of the same
        identity, or by this process before a sweeper declared it dead.
        They are not completed here: the caller completes them
        (``voxgate.proxy.recovery.complete_orphans``)."""

    async def heartbeat(self, instance_id: str, epoch: int, now: float) -> bool:
        """Refresh the heartbeat of the instance's row of ``epoch``; False
        when there is none (a sweeper declared that epoch dead): the row is
        never re-created, the instance must fence its sessions and register
        anew."""

    async def checkpoint_sessions(self, instance_id: str,
                                  sessions: list[tuple[str, Measurements]], now: float) -> int:
        """Write each live session's current measurements (the
        ``measurements`` JSON, the audio/duration/bytes columns and
        ``checkpoint_at`` = ``now``) in one round trip, for the sessions
        still ``active`` under ``instance_id``; returns how many rows."""

    async def unregister_instance(self, instance_id: str, epoch: int | None = None) -> None:
        """Delete the instance's row (of ``epoch`` when given): a clean stop,
        its sessions finished."""

    async def list_instances(self) -> list[Instance]: ...
    async def expired_instances(self, heartbeat_before: float) -> list[Instance]:
        """Instances whose last heartbeat is older than ``heartbeat_before``."""

    async def sweep_instance(self, instance_id: str, epoch: int, now: float, *,
                             heartbeat_before: float) -> list[Orphan]:
        """If the instance's row of ``epoch`` still has a heartbeat older
        than ``heartbeat_before``: delete it (its heartbeats fail from then
        on) and return its active sessions with their last checkpoints, in
        one transaction (empty when it came back meanwhile). The caller
        completes them (``voxgate.proxy.recovery.complete_orphans``)."""

    async def orphaned_sessions(self, before: float) -> list[Orphan]:
        """Active sessions of an instance that has no row any more (swept,
        or stopped uncleanly) whose last sign of life (``checkpoint_at``,
        else ``started_at``) is older than ``before``: those a sweep left
        uncompleted (its process died between the two steps)."""

    # sessions
    async def open_session(self, record: SessionRecord, *, lease_id: str | None = None) -> None:
        """Insert the session row with ``status="active"``, owned by this
        store's ``instance_id``, holding admission lease ``lease_id``."""

    async def complete_session(
        self, record: SessionRecord, verdict: Verdict, *, settle: bool = False,
        settle_from: int | None = None, pack_from: int | None = None,
        provisional: bool = False,
    ) -> MonthlyUsage:
        """In one transaction: write the session's measurements and verdict
        (``status="completed"``), add it to its account's monthly usage, and
        when ``settle`` put it in the settlement outbox (``settlement="pending"``;
        otherwise ``"included"`` for billable sessions, ``"none"`` for the rest).
        ``settle_from``: settle a billable session when the period already had
        at least this many billable sessions, decided inside the transaction
        (``Plan.charges_session``: 0 on pay-as-you-go, the included count on
        plans with an overage price; None = never).
        ``pack_from``: a billable session finding at least this many billable
        sessions in the period (the plan's own included ones) takes a session
        from the account's live add-on pack that expires first
        (``voxgate.models.packs.pack_to_use``), is then not settled, and gets
        ``settlement="pack"``; None = packs are not used.
        ``provisional``: a sweeper's completion from the last checkpoint of a
        lost instance's session. Completing an already completed session
        changes nothing, except the owning instance's final record
        (``provisional`` False) for a provisional row: a billable verdict
        upgrades a not-billable one (counted and settled as a fresh billable
        completion), otherwise the stored verdict and settlement stay and
        the measurements are replaced (usage gets the difference); either
        way the row is no longer provisional. Never counted twice.
        Returns the period's usage after the update."""

    async def set_session_call(self, session_id: str, call_sid: str, stream_sid: str) -> None:
        """Store a phone call's Twilio ``CallSid`` and Media Stream
        ``StreamSid`` on its session (``transport="twilio"``)."""

    async def get_session(self, session_id: str) -> SessionRecord | None: ...
    async def list_sessions(
        self,
        account_id: str,
        *,
        limit: int = 20,
        after: str | None = None,
        filters: SessionFilter | None = None,
    ) -> list[SessionRecord]:
        """Newest first. ``after`` is a session id: return those older than it
        (cursor pagination, like OpenAI's list endpoints)."""

    async def count_sessions(self, account_id: str, filters: SessionFilter | None = None) -> int: ...
    async def abandon_active_sessions(self, verdict: Verdict, now: float,
                                      started_before: float | None = None) -> int:
        """Complete every session still ``active`` (left by a process that
        died), or those started before ``started_before``, with
        ``verdict``; returns how many."""

    # usage
    async def get_usage(self, account_id: str, period: str) -> MonthlyUsage: ...
    async def list_usage(self, account_id: str) -> list[MonthlyUsage]: ...

    # settlement outbox (drained by voxgate.billing)
    async def due_outbox(self, now: float, limit: int = 100) -> list[OutboxItem]: ...
    async def claim_outbox(self, now: float, until: float, limit: int = 100) -> list[OutboxItem]:
        """Take up to ``limit`` items due at ``now`` for sending until
        ``until`` (their next attempt moves there, so a dead claimer's items
        are due again then): one atomic statement, so of any number of
        callers in any process each item goes to one."""

    async def settle_outbox(self, session_id: str, *, settlement: str, ref: str | None) -> None:
        """Mark the session settled and remove it from the outbox."""

    async def retry_outbox(self, session_id: str, *, next_attempt_at: float, error: str) -> None: ...

    # add-on packs and enterprise plans (voxgate.models.packs, .enterprise)
    async def grant_pack(self, account_id: str, *, catalog_pack: str, sessions: int,
                         price_cents: int, source: str, ref: str,
                         purchased_at: float) -> tuple[AccountPack, bool]:
        """Credit a pack, once per ``ref``: (the pack, True if this call
        credited it). Raises KeyError for an unknown account."""

    async def list_packs(self, account_id: str) -> list[AccountPack]: ...
    async def pack_balance(self, account_id: str, period: str, now: float) -> PackBalance: ...
    async def expire_packs(self, now: float) -> list[AccountPack]:
        """Mark packs past their expiry as expired; those this call marked."""

    async def set_enterprise_terms(self, account_id: str, terms: dict[str, Any]) -> None: ...
    async def get_enterprise_terms(self, account_id: str) -> dict[str, Any] | None: ...
    async def list_enterprise_terms(self) -> dict[str, dict[str, Any]]: ...
    async def provider_spend_micros(self, account_id: str, period: str) -> int:
        """The provider cost of the account's completed, operator-paid
        sessions in ``period``, micro-USD."""
    async def claim_spend_alert(self, account_id: str, period: str, threshold: int,
                                now: float) -> bool:
        """Record a spend alert once across processes; True for the recorder."""

    # key/value for small server state (demo key path, secrets, cursors)
    async def get_meta(self, key: str) -> str | None: ...
    async def set_meta(self, key: str, value: str) -> None: ...
