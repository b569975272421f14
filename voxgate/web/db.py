"""The dashboard's queries on the store's SQLite connection (tables of
``migrations/0003_web.sql``): users, cookie sessions, plan history, the audit
log and per-day session aggregates.

Writes go through ``store.transaction()`` (which holds the store's lock);
reads use ``store.db`` directly. Times are Unix seconds.
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

__all__ = ["User", "WebDB", "PlanChange", "DayRow", "AuditEntry", "SESSION_TTL_S"]

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

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


@dataclass(frozen=True, slots=True)
class PlanChange:
    at: float
    account_id: str
    old_plan: str | None
    new_plan: str
    old_status: str | None
    new_status: str


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


_USER_COLS = "id, account_id, email, password_hash, role, created_at, last_signin_at"


class WebDB:
    """The dashboard tables on an open ``SQLiteStore``.

    Args:
        store: the ``SQLiteStore`` (its ``db`` and ``transaction()`` are used).
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
                f"INSERT INTO users ({_USER_COLS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (user.id, user.account_id, user.email, user.password_hash, user.role,
                 user.created_at))
        return user

    async def user_by_email(self, email: str) -> User | None:
        row = await self._one(f"SELECT {_USER_COLS} FROM users WHERE email = ?",
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

    async def start_session(self, user: User, now: float | None = None) -> tuple[str, str]:
        """A new server-side session: (cookie token, CSRF token)."""
        now = time.time() if now is None else now
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        async with self.store.transaction() as db:
            await db.execute(
                "INSERT INTO web_sessions (token_hash, user_id, csrf_token, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?)",
                (self._token_hash(token), user.id, csrf, now, now + SESSION_TTL_S))
            await db.execute("UPDATE users SET last_signin_at = ? WHERE id = ?", (now, user.id))
            await db.execute("DELETE FROM web_sessions WHERE expires_at < ?", (now,))
        return token, csrf

    async def session_user(self, token: str, now: float | None = None) -> tuple[User, str] | None:
        """The user and CSRF token of a live session cookie; None if unknown
        or expired."""
        now = time.time() if now is None else now
        row = await self._one(
            f"SELECT {', '.join('u.' + c.strip() for c in _USER_COLS.split(','))},"
            " s.csrf_token FROM web_sessions s JOIN users u ON u.id = s.user_id"
            " WHERE s.token_hash = ? AND s.expires_at > ?", (self._token_hash(token), now))
        if row is None:
            return None
        return User(*row[:7]), row[7]

    async def end_session(self, token: str) -> None:
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM web_sessions WHERE token_hash = ?",
                             (self._token_hash(token),))

    # ------------------------------------------------------------ plan history, audit

    async def plan_changes(self, until: float | None = None) -> list[PlanChange]:
        """Every recorded plan/status change (oldest first), before ``until``."""
        rows = await self.store.db.execute_fetchall(
            "SELECT at, account_id, old_plan, new_plan, old_status, new_status"
            " FROM plan_changes WHERE at < ? ORDER BY at, id",
            (time.time() + 1 if until is None else until,))
        return [PlanChange(*r) for r in rows]

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
            "SELECT date(started_at, 'unixepoch') AS day,"
            " SUM(CASE WHEN billable = 1 THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN billable = 1 THEN 0 ELSE 1 END),"
            " SUM(CASE WHEN billable = 1 THEN duration_ms ELSE 0 END) / 60000.0"
            " FROM sessions WHERE account_id = ? AND status = 'completed'"
            " AND started_at >= ? AND started_at < ? GROUP BY day ORDER BY day",
            (account_id, since, until))
        return [DayRow(r[0], int(r[1]), int(r[2]), float(r[3] or 0.0)) for r in rows]

    async def active_account_ids(self, since: float) -> set[str]:
        """Accounts with at least one session started at or after ``since``."""
        rows = await self.store.db.execute_fetchall(
            "SELECT DISTINCT account_id FROM sessions WHERE started_at >= ?", (since,))
        return {r[0] for r in rows}

    async def sessions_per_account(self, period: str) -> dict[str, int]:
        """Completed sessions per account in ``period`` (``monthly_usage``)."""
        rows = await self.store.db.execute_fetchall(
            "SELECT account_id, sessions FROM monthly_usage WHERE period = ?", (period,))
        return {r[0]: int(r[1]) for r in rows}

    async def sessions_per_day_all(self, since: float) -> list[tuple[str, int, int]]:
        """(day, sessions, billable) over every account since ``since``."""
        rows = await self.store.db.execute_fetchall(
            "SELECT date(started_at, 'unixepoch') AS day, COUNT(*),"
            " SUM(CASE WHEN billable = 1 THEN 1 ELSE 0 END) FROM sessions"
            " WHERE started_at >= ? GROUP BY day ORDER BY day", (since,))
        return [(r[0], int(r[1]), int(r[2] or 0)) for r in rows]

    async def project_names(self, account_id: str) -> dict[str, str]:
        """Every project of the account ever (deleted ones too): id → name."""
        rows = await self.store.db.execute_fetchall(
            "SELECT id, name, deleted_at FROM projects WHERE account_id = ?", (account_id,))
        return {r[0]: r[1] + (" (deleted)" if r[2] else "") for r in rows}
