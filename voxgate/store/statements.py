"""The rows of the ``Store`` and the statements of the session path.

Column lists and row mapping (``account_row``, ``session_row``, …) shared by
``voxgate.store.sql.SQLStore`` and its parts, and the statements a session's
completion runs in one hop to a connection's thread (``complete_sync``, the
Python path; PostgreSQL runs the same rules in one round trip, the PL/pgSQL
function ``voxgate_complete_session`` of
``migrations/postgresql/0011_hot_path.sql``). ``conn`` is the DB-API
connection the dialect drives (``sqlite3.Connection``, or PostgreSQL's
``voxgate.store.dialects.postgresql.PgConnection`` with ``?`` placeholders
translated).

Portable SQL: these statements and the rooms' (``voxgate.store.queries``)
run on both databases: ``ON CONFLICT … DO NOTHING/UPDATE`` (never ``INSERT
OR IGNORE``), columns qualified in upsert ``SET`` clauses, ``utc_day(ts)``
for the UTC day of a timestamp.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from voxgate.models import (
    Account,
    ApiKey,
    EphemeralKey,
    Measurements,
    Project,
    SessionRecord,
    Verdict,
)
from voxgate.models.packs import AccountPack, pack_to_use
from voxgate.models.pricing import micros_to_usd, usd_to_micros
from voxgate.store.base import MonthlyUsage, Orphan, period_of
from voxgate.store.connection import rollback_open

# ---------------------------------------------------------------- row mapping

ACCOUNT_COLS = ("id, email, plan_id, created_at, status, stripe_customer_id, "
                 "stripe_subscription_id, past_due_since, name, spend_limit_usd")
PROJECT_COLS = ("id, account_id, name, created_at, allowed_origins, allowed_models, allowed_ips, "
                "provider_key_sealed, provider_key_last4, twilio_token_sealed, twilio_token_last4")
ADMIN_KEY_COLS = "id, account_id, prefix, key_hash, created_at, name, revoked_at, last_used_at"
API_KEY_COLS = "id, project_id, prefix, key_hash, created_at, name, revoked_at, last_used_at"
EPHEMERAL_COLS = "id, project_id, key_hash, created_at, expires_at, api_key_id, session"
# columns of each row kind, for rows that join several (api key + project + account)
N_PROJECT = len(PROJECT_COLS.split(","))
N_API_KEY = len(API_KEY_COLS.split(","))
N_EPHEMERAL = len(EPHEMERAL_COLS.split(","))
SESSION_COLS = ("id, account_id, project_id, transport, started_at, model, api_key_id, "
                 "ephemeral_key_id, status, ended_at, period, measurements, billable, "
                 "reason, rule, settlement, settlement_ref, call_sid, stream_sid, "
                 "provider_cost_micros, provider_cost_reason, paid_by")
USAGE_COLS = "sessions, billable_sessions, minutes_used, audio_seconds, bytes"
OUTBOX_COLS = ("session_id, account_id, period, created_at, attempts, next_attempt_at, "
                "last_error")
INSTANCE_COLS = "id, host, pid, started_at, heartbeat_at, epoch"


def account_row(row: Any) -> Account:
    """An ``accounts`` row (``ACCOUNT_COLS``); ``spend_limit_usd`` is kept as
    a decimal string."""
    limit = row[9]
    return Account(id=row[0], email=row[1], plan_id=row[2], created_at=row[3], status=row[4],
                   stripe_customer_id=row[5], stripe_subscription_id=row[6],
                   past_due_since=row[7], name=row[8],
                   spend_limit_usd=None if limit is None else Decimal(limit))


def project_row(row: Any) -> Project:
    return Project(id=row[0], account_id=row[1], name=row[2], created_at=row[3],
                   allowed_origins=tuple(orjson.loads(row[4])),
                   allowed_models=tuple(orjson.loads(row[5])),
                   allowed_ips=tuple(orjson.loads(row[6])),
                   provider_key_sealed=row[7], provider_key_last4=row[8],
                   twilio_token_sealed=row[9], twilio_token_last4=row[10])


def api_key_row(row: Any) -> ApiKey:
    return ApiKey(*row)


def ephemeral_row(row: Any) -> EphemeralKey:
    return EphemeralKey(id=row[0], project_id=row[1], key_hash=row[2], created_at=row[3],
                        expires_at=row[4], api_key_id=row[5], session=orjson.loads(row[6]))


def session_row(row: Any) -> SessionRecord:
    return SessionRecord(
        id=row[0], account_id=row[1], project_id=row[2], transport=row[3], started_at=row[4],
        model=row[5], api_key_id=row[6], ephemeral_key_id=row[7], status=row[8], ended_at=row[9],
        period=row[10],
        measurements=Measurements.from_dict(orjson.loads(row[11])),
        billable=None if row[12] is None else bool(row[12]),
        reason=row[13], rule=row[14], settlement=row[15], settlement_ref=row[16],
        call_sid=row[17], stream_sid=row[18],
        provider_cost_usd=None if row[19] is None else micros_to_usd(int(row[19])),
        provider_cost_reason=row[20], paid_by=row[21],
    )


def usage_row(account_id: str, period: str, row: Any) -> MonthlyUsage:
    # REAL columns can come back as int (e.g. through RETURNING); keep the types
    return MonthlyUsage(account_id, period, int(row[0]), int(row[1]), float(row[2]),
                        float(row[3]), int(row[4]))


def prefixed(cols: str, alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in cols.split(","))


# ---------------------------------------------------------------- the session path

OPEN_SESSION_SQL = """
INSERT INTO sessions (id, account_id, project_id, api_key_id, ephemeral_key_id, transport,
    model, status, started_at, ended_at, period, connect_ms, duration_ms, audio_in_ms,
    audio_out_ms, bytes_in, bytes_out, measurements, instance_id, lease_id, paid_by)
VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# Insert-or-complete: updates only a session not yet completed, so the
# rowcount (0 or 1) tells whether this call is the one completing it. On
# PostgreSQL it also locks the row, completed or not, until the commit.
# _COMPLETE_PROVISIONAL_SQL also sets ``provisional`` = 1 (a sweeper's
# completion); an active row's is 0 already.
_COMPLETE_SESSION_SQL = """
INSERT INTO sessions (id, account_id, project_id, api_key_id, ephemeral_key_id, transport,
    model, status, started_at, ended_at, period, billable, reason, rule, settlement,
    connect_ms, duration_ms, audio_in_ms, audio_out_ms, bytes_in, bytes_out, measurements{p})
VALUES (?, ?, ?, ?, ?, ?, ?, 'completed', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?{v})
ON CONFLICT (id) DO UPDATE SET
    status = 'completed', ended_at = excluded.ended_at, billable = excluded.billable,
    reason = excluded.reason, rule = excluded.rule, settlement = excluded.settlement,
    connect_ms = excluded.connect_ms, duration_ms = excluded.duration_ms,
    audio_in_ms = excluded.audio_in_ms, audio_out_ms = excluded.audio_out_ms,
    bytes_in = excluded.bytes_in, bytes_out = excluded.bytes_out,
    measurements = excluded.measurements{u}
WHERE sessions.status <> 'completed'
"""
_COMPLETE_PROVISIONAL_SQL = _COMPLETE_SESSION_SQL.format(
    p=", provisional", v=", 1", u=", provisional = excluded.provisional")
_COMPLETE_SESSION_SQL = _COMPLETE_SESSION_SQL.format(p="", v="", u="")

# The owning instance's final record replacing a provisional one
# (complete_session's upgrade rule): with the verdict (billable upgrade) or
# measurements only.
_UPGRADE_SESSION_SQL = """
UPDATE sessions SET ended_at = ?, billable = 1, reason = ?, rule = ?, settlement = ?,
    connect_ms = ?, duration_ms = ?, audio_in_ms = ?, audio_out_ms = ?, bytes_in = ?,
    bytes_out = ?, measurements = ?, provisional = 0
WHERE id = ?
"""
_REMEASURE_SESSION_SQL = """
UPDATE sessions SET ended_at = ?, connect_ms = ?, duration_ms = ?, audio_in_ms = ?,
    audio_out_ms = ?, bytes_in = ?, bytes_out = ?, measurements = ?, provisional = 0
WHERE id = ?
"""

# Adds to the period's usage and returns it: under this row's lock (held to
# the commit) the returned billable_sessions numbers a billable session.
_ADD_USAGE_SQL = f"""
INSERT INTO monthly_usage (account_id, period, sessions, billable_sessions, minutes_used,
    audio_seconds, bytes)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (account_id, period) DO UPDATE SET
    sessions = monthly_usage.sessions + excluded.sessions,
    billable_sessions = monthly_usage.billable_sessions + excluded.billable_sessions,
    minutes_used = monthly_usage.minutes_used + excluded.minutes_used,
    audio_seconds = monthly_usage.audio_seconds + excluded.audio_seconds,
    bytes = monthly_usage.bytes + excluded.bytes
RETURNING {USAGE_COLS}
"""


PACK_COLS = ("id, account_id, catalog_pack, sessions, sessions_used, price_cents, source, ref,"
              " purchased_at, expires_at")


def pack_row(row: Any) -> AccountPack:
    return AccountPack(*row)


def live_packs_sync(conn: Any, account_id: str, now: float) -> list[AccountPack]:
    rows = conn.execute(
        f"SELECT {PACK_COLS} FROM session_packs WHERE account_id = ? AND purchased_at <= ?"
        " AND expires_at > ?", (account_id, now, now)).fetchall()
    return [pack_row(r) for r in rows]


def transact(conn: Any, begin: str, fn: Any, *args: Any) -> Any:
    """``fn(conn, *args)`` inside ``begin`` … COMMIT (ROLLBACK on error), on
    the connection's thread. ``begin`` is the dialect's write transaction
    (``Dialect.begin_write``: ``BEGIN IMMEDIATE`` on SQLite, a plain
    ``BEGIN`` on PostgreSQL, where row locks serialize what must be)."""
    conn.execute(begin)
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
    except BaseException:
        rollback_open(conn)
        raise
    return result


def take_pack_sync(conn: Any, account_id: str, now: float) -> str | None:
    """Take one session from the account's pack ``pack_to_use`` picks (live,
    sessions left, first to expire, then the older purchase, then id), with
    a guarded UPDATE (``sessions_used < sessions``); when another
    transaction took that pack's last session meanwhile, the next pack is
    tried. Returns the pack's id, None when no pack has a session left."""
    packs = live_packs_sync(conn, account_id, now)
    while (pack := pack_to_use(packs, now)) is not None:
        if conn.execute("UPDATE session_packs SET sessions_used = sessions_used + 1"
                        " WHERE id = ? AND sessions_used < sessions", (pack.id,)).rowcount == 1:
            return pack.id
        packs = [p for p in packs if p.id != pack.id]
    return None


def usage_now_sync(conn: Any, account_id: str, period: str) -> MonthlyUsage:
    row = conn.execute(
        f"SELECT {USAGE_COLS} FROM monthly_usage WHERE account_id = ? AND period = ?",
        (account_id, period)).fetchone()
    return usage_row(account_id, period, row) if row else MonthlyUsage(account_id, period)


def complete_sync(
    conn: Any, record: SessionRecord, verdict: Verdict, settle: bool,
    ended_at: float, settle_from: int | None = None, pack_from: int | None = None,
    provisional: bool = False,
) -> MonthlyUsage:
    """The statements of ``complete_session``; the caller holds the
    transaction. The same rules, statement for statement, as PostgreSQL's
    ``voxgate_complete_session`` (``migrations/postgresql/0011_hot_path.sql``);
    locks in this order: the session row, the usage row, packs, outbox.

    1. Complete the row if not completed yet (``_COMPLETE_SESSION_SQL``).
       Already completed: no change, unless it is provisional and this is
       the owning instance's final record (``provisional`` False): then a
       billable verdict upgrades a not-billable one (counted as a billable
       session now, settled below), otherwise the stored verdict stays and
       only the measurements (and their difference in usage) change.
    2. Add to the period's usage; its ``RETURNING billable_sessions`` under
       the usage row lock numbers a billable session (before = it − 1).
    3. A billable session past ``pack_from`` takes a pack session
       (``take_pack_sync``); else past ``settle_from`` it is settled
       (``settlement="pending"``, outbox).
    4. The record's provider cost, if it carries one (or the reason it has
       none), is written while the row holds the measurements it was
       computed from (``cost_sync``; migration 0014).
    """
    period = record.period or period_of(record.started_at)
    m = record.measurements
    billable = bool(verdict.billable)
    measured = (m.connect_ms, m.duration_ms, m.audio_in_ms, m.audio_out_ms, m.bytes_in,
                m.bytes_out, orjson.dumps(m.to_dict()).decode())
    settlement = "pending" if settle else ("included" if billable else "none")
    audio_s = (m.audio_in_ms + m.audio_out_ms) / 1000.0
    nbytes = m.bytes_in + m.bytes_out
    counted, decide, pending = 1, billable, settle
    add_billable = int(billable)
    minutes = m.duration_ms / 60000.0 if billable else 0.0
    cursor = conn.execute(_COMPLETE_PROVISIONAL_SQL if provisional else _COMPLETE_SESSION_SQL, (
        record.id, record.account_id, record.project_id, record.api_key_id,
        record.ephemeral_key_id, record.transport, record.model, record.started_at,
        ended_at, period, int(billable), verdict.reason, verdict.rule, settlement, *measured,
    ))
    if cursor.rowcount == 0:  # already completed
        old = conn.execute(
            "SELECT provisional, billable, duration_ms, audio_in_ms, audio_out_ms, bytes_in,"
            " bytes_out FROM sessions WHERE id = ?", (record.id,)).fetchone()
        if old is None or not old[0] or provisional:  # a retry: counted once only
            cost_sync(conn, record, measured[-1])
            return usage_now_sync(conn, record.account_id, period)
        counted = 0
        audio_s -= (old[3] + old[4]) / 1000.0
        nbytes -= old[5] + old[6]
        if billable and not old[1]:  # the final record upgrades a not-billable one
            settlement = "pending" if settle else "included"
            conn.execute(_UPGRADE_SESSION_SQL, (ended_at, verdict.reason, verdict.rule,
                                                settlement, *measured, record.id))
        else:  # the stored verdict and settlement stay; measurements replaced
            decide = pending = False
            add_billable = 0
            minutes = (m.duration_ms - old[2]) / 60000.0 if old[1] else 0.0
            conn.execute(_REMEASURE_SESSION_SQL, (ended_at, *measured, record.id))
    row = conn.execute(_ADD_USAGE_SQL, (
        record.account_id, period, counted, add_billable, minutes, audio_s, nbytes)).fetchone()
    if decide and not settle and (settle_from is not None or pack_from is not None):
        before = int(row[1]) - 1  # billable sessions of the period before this one
        pack_id = None
        if pack_from is not None and before >= pack_from:
            pack_id = take_pack_sync(conn, record.account_id, ended_at)
        final = settlement
        if pack_id is not None:
            conn.execute("INSERT INTO pack_sessions (session_id, account_pack_id, account_id,"
                         " period, used_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                         (record.id, pack_id, record.account_id, period, ended_at))
            final = "pack"
        elif settle_from is not None and before >= settle_from:
            final, pending = "pending", True
        if final != settlement:
            conn.execute("UPDATE sessions SET settlement = ? WHERE id = ?", (final, record.id))
    if pending:
        conn.execute(
            f"INSERT INTO settlement_outbox ({OUTBOX_COLS})"
            " VALUES (?, ?, ?, ?, 0, ?, NULL) ON CONFLICT DO NOTHING",
            (record.id, record.account_id, period, ended_at, ended_at))
    cost_sync(conn, record, measured[-1])
    return usage_row(record.account_id, period, row)


def cost_params(record: SessionRecord) -> tuple[int | None, str | None]:
    """``(provider_cost_micros, provider_cost_reason)`` of the record, as
    stored (migration 0014)."""
    usd = record.provider_cost_usd
    return (None if usd is None else usd_to_micros(usd)), record.provider_cost_reason


def cost_sync(conn: Any, record: SessionRecord, measurements: str) -> None:
    """Write the record's provider cost on its row if the row holds
    ``measurements`` (the JSON the cost was computed from): a completion
    that did not replace the stored measurements leaves their cost. A
    record without a cost nor a reason (a caller that computed none)
    changes nothing."""
    micros, reason = cost_params(record)
    if micros is None and reason is None:
        return
    conn.execute("UPDATE sessions SET provider_cost_micros = ?, provider_cost_reason = ?"
                 " WHERE id = ? AND measurements = ?", (micros, reason, record.id, measurements))


def orphans_sync(conn: Any, where: str, params: tuple[Any, ...]) -> list[Orphan]:
    """The active sessions matching ``where`` (on ``sessions s``) with their
    lease ids and last checkpoints, for ``complete_orphans``."""
    rows = conn.execute(
        f"SELECT {prefixed(SESSION_COLS, 's')}, s.lease_id, s.checkpoint_at FROM sessions s"
        f" WHERE s.status = 'active' AND {where} ORDER BY s.started_at, s.id", params).fetchall()
    return [Orphan(row[0], row[1], row[-2], session_row(row[:-2]), row[-1]) for row in rows]


_CHECKPOINT_SQL = """
UPDATE sessions SET measurements = ?, connect_ms = ?, duration_ms = ?, audio_in_ms = ?,
    audio_out_ms = ?, bytes_in = ?, bytes_out = ?, checkpoint_at = ?
WHERE id = ? AND status = 'active' AND instance_id = ?
"""


def checkpoint_sync(conn: Any, rows: list[tuple[Any, ...]]) -> int:
    """``_CHECKPOINT_SQL`` for every row in one transaction (a plain BEGIN:
    no write lock of the whole database on PostgreSQL)."""
    conn.execute("BEGIN")
    try:
        count = conn.executemany(_CHECKPOINT_SQL, rows).rowcount
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return max(0, count or 0)
