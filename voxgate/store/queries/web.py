"""The dashboard's queries on the store's connection, SQLite or PostgreSQL (tables of
``migrations/0003_web.sql``): users, cookie sessions, plan history, the audit
log and per-day session aggregates.

Writes go through ``store.transaction()`` (which holds the store's lock);
reads use ``store.db`` directly. Times are Unix seconds. Used by
``voxgate.web`` (re-exported as ``voxgate.web.db``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson

from voxgate.models import new_id

__all__ = ["User", "WebDB", "PlanChange", "plan_changes", "DayRow", "AuditEntry", "Challenge", "SESSION_TTL_S",
           "CHALLENGE_TTL_S", "CHALLENGE_ATTEMPTS"]

SESSION_TTL_S = 14 * 24 * 3600.0


@dataclass(slots=True)
class User:
    """A dashboard user; ``role`` is ``member`` or ``operator``."""

    id: str
    account_id: str
    email: str
    password_hash: str
    role: str
    created_at: float
    last_signin_at: float | None = None
    totp_secret: str | None = None  # base32; None = no two-factor sign-in
    totp_pending: str | None = None  # being enrolled, not yet confirmed
    totp_last_counter: int = 0  # RFC 6238 time step of the last accepted code

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    @property
    def has_2fa(self) -> bool:
        return self.totp_secret is not None

    def __repr__(self) -> str:  # never the password hash or the TOTP secrets
        return f"User(id={self.id!r}, email={self.email!r}, role={self.role!r})"


@dataclass(frozen=True, slots=True)
class Challenge:
    """A sign-in past its password, waiting for the second factor."""

    user_id: str
    next: str
    attempts: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class PlanChange:
    at: float
    account_id: str
    old_plan: str | None
    new_plan: str
    old_status: str | None
    new_status: str
    subscribed: bool = False  # a Stripe subscription after the change
    source: str = ""  # 'created', 'update', 'migration'


@dataclass(frozen=True, slots=True)
class DayRow:
    """Sessions of one UTC day: ``day`` is ``YYYY-MM-DD``; minutes are the
    summed durations of billable sessions."""

    day: str
    billable: int
    not_billable: int
    billable_minutes: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    actor: str
    account_id: str | None
    action: str
    detail: dict[str, Any]


_USER_COLS = ("id, account_id, email, password_hash, role, created_at, last_signin_at,"
              " totp_secret, totp_pending, totp_last_counter")
_N_USER_COLS = len(_USER_COLS.split(","))
CHALLENGE_TTL_S = 300.0
CHALLENGE_ATTEMPTS = 5


async def plan_changes(store: Any, until: float | None = None) -> list[PlanChange]:
    """Every recorded plan/status change (oldest first), before ``until``
    (Unix s; default now)."""
    rows = await store.db.execute_fetchall(
        "SELECT at, account_id, old_plan, new_plan, old_status, new_status, subscribed, source"
        " FROM plan_changes WHERE at < ? ORDER BY at, id",
        (time.time() + 1 if until is None else until,))
    return [PlanChange(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7]) for r in rows]


class WebDB:
    """The dashboard tables on an open store.

    Args:
        store: the open store (its ``db`` and ``transaction()`` are used).
        secret: key for hashing session tokens (bytes).
    """

    def __init__(self, store: Any, secret: bytes) -> None:
        self.store = store
        self.secret = secret

    def _token_hash(self, token: str) -> str:
        return hmac.new(self.secret, token.encode(), hashlib.sha256).hexdigest()

    async def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = await self.store.db.execute_fetchall(sql, params)
        return rows[0] if rows else None

    # ------------------------------------------------------------ users

    async def create_user(self, account_id: str, email: str, password_hash: str,
                          role: str = "member") -> User:
        user = User(new_id("user"), account_id, email.strip().lower(), password_hash, role,
                    time.time())
        async with self.store.transaction() as db:
            await db.execute(
                f"INSERT INTO users ({_USER_COLS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, NULL, 0)",
                (user.id, user.account_id, user.email, user.password_hash, user.role,
                 user.created_at))
        return user

    async def user_by_email(self, email: str) -> User | None:
        row = await self._one(f"SELECT {_USER_COLS} FROM users WHERE lower(email) = lower(?)",
                              (email.strip().lower(),))
        return User(*row) if row else None

    async def users_of(self, account_id: str) -> list[User]:
        rows = await self.store.db.execute_fetchall(
            f"SELECT {_USER_COLS} FROM users WHERE account_id = ? ORDER BY created_at",
            (account_id,))
        return [User(*r) for r in rows]

    async def set_role(self, user_id: str, role: str) -> None:
        async with self.store.transaction() as db:
            await db.execute("UPDATE users SET role = ? WHERE id = ?", (role, user_id))

    async def set_password(self, user_id: str, password_hash: str) -> None:
        async with self.store.transaction() as db:
            await db.execute("UPDATE users SET password_hash = ? WHERE id = ?",
                             (password_hash, user_id))

    # ------------------------------------------------------------ cookie sessions

    async def start_session(self, user: User, now: float | None = None,
                            mfa: bool = False) -> tuple[str, str]:
        """A new server-side session: (cookie token, CSRF token). ``mfa``:
        the sign-in passed the second factor."""
        now = time.time() if now is None else now
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        async with self.store.transaction() as db:
            await db.execute(
                "INSERT INTO web_sessions (token_hash, user_id, csrf_token, created_at,"
                " expires_at, mfa_at) VALUES (?, ?, ?, ?, ?, ?)",
                (self._token_hash(token), user.id, csrf, now, now + SESSION_TTL_S,
                 now if mfa else None))
            await db.execute("UPDATE users SET last_signin_at = ? WHERE id = ?", (now, user.id))
            await db.execute("DELETE FROM web_sessions WHERE expires_at < ?", (now,))
        return token, csrf

    async def session_user(self, token: str,
                           now: float | None = None) -> tuple[User, str, float | None] | None:
        """(user, CSRF token, when the session passed the second factor or
        None) of a live session cookie; None if unknown or expired."""
        now = time.time() if now is None else now
        row = await self._one(
            f"SELECT {', '.join('u.' + c.strip() for c in _USER_COLS.split(','))},"
            " s.csrf_token, s.mfa_at FROM web_sessions s JOIN users u ON u.id = s.user_id"
            " WHERE s.token_hash = ? AND s.expires_at > ?", (self._token_hash(token), now))
        if row is None:
            return None
        return User(*row[:_N_USER_COLS]), row[_N_USER_COLS], row[_N_USER_COLS + 1]

    async def mark_session_mfa(self, token: str, now: float | None = None) -> None:
        """Record that this session passed the second factor (enrolment)."""
        async with self.store.transaction() as db:
            await db.execute("UPDATE web_sessions SET mfa_at = ? WHERE token_hash = ?",
                             (time.time() if now is None else now, self._token_hash(token)))

    async def end_other_sessions(self, user_id: str, keep_token: str | None) -> None:
        """End every session of the user but ``keep_token``'s."""
        keep = self._token_hash(keep_token) if keep_token else ""
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM web_sessions WHERE user_id = ? AND token_hash != ?",
                             (user_id, keep))

    async def end_session(self, token: str) -> None:
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM web_sessions WHERE token_hash = ?",
                             (self._token_hash(token),))

    # ------------------------------------------------------------ two-factor sign-in

    async def user_by_id(self, user_id: str) -> User | None:
        row = await self._one(f"SELECT {_USER_COLS} FROM users WHERE id = ?", (user_id,))
        return User(*row) if row else None

    async def set_totp_pending(self, user_id: str, secret: str | None) -> None:
        async with self.store.transaction() as db:
            await db.execute("UPDATE users SET totp_pending = ? WHERE id = ?", (secret, user_id))

    async def enable_totp(self, user_id: str, secret: str, step: int,
                          recovery_codes: list[str], now: float | None = None) -> None:
        """Turn two-factor sign-in on with ``secret`` (its code for ``step``
        was just accepted) and replace the recovery codes (stored hashed)."""
        now = time.time() if now is None else now
        async with self.store.transaction() as db:
            await db.execute(
                "UPDATE users SET totp_secret = ?, totp_pending = NULL, totp_last_counter = ?"
                " WHERE id = ?", (secret, step, user_id))
            await db.execute("DELETE FROM recovery_codes WHERE user_id = ?", (user_id,))
            await db.executemany(
                "INSERT INTO recovery_codes (user_id, code_hash, created_at) VALUES (?, ?, ?)",
                [(user_id, self._token_hash(c.replace("-", "")), now) for c in recovery_codes])

    async def disable_totp(self, user_id: str) -> None:
        async with self.store.transaction() as db:
            await db.execute(
                "UPDATE users SET totp_secret = NULL, totp_pending = NULL WHERE id = ?",
                (user_id,))
            await db.execute("DELETE FROM recovery_codes WHERE user_id = ?", (user_id,))

    async def accept_totp_step(self, user_id: str, step: int) -> bool:
        """Record ``step`` as used; False when it (or a later one) already was
        (two requests racing with the same code)."""
        async with self.store.transaction() as db:
            cursor = await db.execute(
                "UPDATE users SET totp_last_counter = ? WHERE id = ? AND totp_last_counter < ?",
                (step, user_id, step))
            return cursor.rowcount == 1

    async def use_recovery_code(self, user_id: str, code: str,
                                now: float | None = None) -> bool:
        """Spend a recovery code (10 hex digits): True once, then False."""
        async with self.store.transaction() as db:
            cursor = await db.execute(
                "UPDATE recovery_codes SET used_at = ? WHERE user_id = ? AND code_hash = ?"
                " AND used_at IS NULL",
                (time.time() if now is None else now, user_id, self._token_hash(code)))
            return cursor.rowcount == 1

    async def recovery_codes_left(self, user_id: str) -> int:
        row = await self._one(
            "SELECT COUNT(*) FROM recovery_codes WHERE user_id = ? AND used_at IS NULL",
            (user_id,))
        return int(row[0]) if row else 0

    async def start_challenge(self, user: User, next_path: str,
                              now: float | None = None) -> str:
        """A pending sign-in for the second factor; returns its cookie token."""
        now = time.time() if now is None else now
        token = secrets.token_urlsafe(32)
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM signin_challenges WHERE expires_at < ?", (now,))
            await db.execute(
                "INSERT INTO signin_challenges (token_hash, user_id, next, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?)",
                (self._token_hash(token), user.id, next_path, now, now + CHALLENGE_TTL_S))
        return token

    async def challenge(self, token: str, now: float | None = None) -> Challenge | None:
        """The live challenge of a ``vg_2fa`` cookie, or None."""
        now = time.time() if now is None else now
        row = await self._one(
            "SELECT user_id, next, attempts, expires_at FROM signin_challenges"
            " WHERE token_hash = ? AND expires_at > ? AND attempts < ?",
            (self._token_hash(token), now, CHALLENGE_ATTEMPTS))
        return Challenge(row[0], row[1], int(row[2]), float(row[3])) if row else None

    async def challenge_failed(self, token: str) -> None:
        async with self.store.transaction() as db:
            await db.execute(
                "UPDATE signin_challenges SET attempts = attempts + 1 WHERE token_hash = ?",
                (self._token_hash(token),))

    async def end_challenge(self, token: str) -> None:
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM signin_challenges WHERE token_hash = ?",
                             (self._token_hash(token),))

    # ------------------------------------------------------------ plan history, audit

    async def plan_changes(self, until: float | None = None) -> list[PlanChange]:
        """Every recorded plan/status change (oldest first), before ``until``."""
        return await plan_changes(self.store, until)

    async def operator_account_ids(self) -> set[str]:
        """Accounts with at least one operator user (left out of customer figures)."""
        rows = await self.store.db.execute_fetchall(
            "SELECT DISTINCT account_id FROM users WHERE role = 'operator'")
        return {r[0] for r in rows}

    async def audit(self, actor: str, action: str, account_id: str | None = None,
                    detail: dict[str, Any] | None = None) -> None:
        """Append to ``audit_log`` (the columns billing shares)."""
        async with self.store.transaction() as db:
            await db.execute(
                "INSERT INTO audit_log (at, actor, account_id, action, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                (time.time(), actor, account_id, action, orjson.dumps(detail or {}).decode()))

    async def audit_entries(self, limit: int = 200, before: float | None = None) -> list[AuditEntry]:
        rows = await self.store.db.execute_fetchall(
            "SELECT at, actor, account_id, action, detail FROM audit_log"
            " WHERE at < ? ORDER BY at DESC LIMIT ?",
            (before if before is not None else time.time() + 1, limit))
        out = []
        for at, actor, account_id, action, detail in rows:
            try:
                parsed = orjson.loads(detail) if isinstance(detail, (str, bytes)) else detail
            except orjson.JSONDecodeError:
                parsed = {"raw": detail}
            out.append(AuditEntry(float(at), str(actor), account_id, str(action),
                                  parsed if isinstance(parsed, dict) else {"value": parsed}))
        return out

    # ------------------------------------------------------------ aggregates

    async def sessions_per_day(self, account_id: str, since: float, until: float) -> list[DayRow]:
        """Completed sessions per UTC day in [since, until), by verdict."""
        rows = await self.store.db.execute_fetchall(
            "SELECT utc_day(started_at) AS day,"
            " SUM(CASE WHEN billable = 1 THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN billable = 1 THEN 0 ELSE 1 END),"
            " SUM(CASE WHEN billable = 1 THEN duration_ms ELSE 0 END) / 60000.0"
            " FROM sessions WHERE account_id = ? AND status = 'completed'"
            " AND started_at >= ? AND started_at < ? GROUP BY day ORDER BY day",
            (account_id, since, until))
        return [DayRow(r[0], int(r[1]), int(r[2]), float(r[3] or 0.0)) for r in rows]

    async def active_account_ids(self, since: float) -> set[str]:
        """Accounts with at least one session started at or after ``since``."""
        # per account, one probe of (account_id, started_at): an index both
        # databases' planners take, however many sessions there are
        rows = await self.store.db.execute_fetchall(
            "SELECT a.id FROM accounts a WHERE EXISTS (SELECT 1 FROM sessions s"
            " WHERE s.account_id = a.id AND s.started_at >= ?)", (since,))
        return {r[0] for r in rows}

    async def sessions_per_account(self, period: str) -> dict[str, int]:
        """Completed sessions per account in ``period`` (``monthly_usage``)."""
        rows = await self.store.db.execute_fetchall(
            "SELECT account_id, sessions FROM monthly_usage WHERE period = ?", (period,))
        return {r[0]: int(r[1]) for r in rows}

    async def sessions_per_day_all(self, since: float) -> list[tuple[str, int, int]]:
        """(day, sessions, billable) over every account since ``since``."""
        rows = await self.store.db.execute_fetchall(
            "SELECT utc_day(started_at) AS day, COUNT(*),"
            " SUM(CASE WHEN billable = 1 THEN 1 ELSE 0 END) FROM sessions"
            " WHERE started_at >= ? GROUP BY day ORDER BY day", (since,))
        return [(r[0], int(r[1]), int(r[2] or 0)) for r in rows]

    async def project_names(self, account_id: str) -> dict[str, str]:
        """Every project of the account ever (deleted ones too): id → name."""
        rows = await self.store.db.execute_fetchall(
            "SELECT id, name, deleted_at FROM projects WHERE account_id = ?", (account_id,))
        return {r[0]: r[1] + (" (deleted)" if r[2] else "") for r in rows}
