"""The ``Store``'s accounts, projects, admin keys, API keys and ephemeral
keys, and the audit log: a part of ``voxgate.store.sql.SQLStore`` (its
methods, the same on every dialect).

Key lookups (``find_api_key``) are cached per process for at most
``KEY_CACHE_TTL_S`` (a bound on how long another process's change may go
unseen); every change made through this store clears the cache at once.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import orjson

from voxgate.caches import BoundedDict
from voxgate.models import (
    Account,
    AdminKey,
    ApiKey,
    EphemeralKey,
    Project,
    hash_secret,
    new_admin_key,
    new_api_key,
    new_ephemeral_key,
    new_id,
)
from voxgate.store.core import SQLCore
from voxgate.store.dialects import Dialect
from voxgate.store.statements import (
    ACCOUNT_COLS,
    ADMIN_KEY_COLS,
    API_KEY_COLS,
    EPHEMERAL_COLS,
    N_API_KEY,
    N_EPHEMERAL,
    N_PROJECT,
    PROJECT_COLS,
    account_row,
    api_key_row,
    ephemeral_row,
    prefixed,
    project_row,
)

__all__ = ["AccountMethods"]

API_KEY_PREFIX_LEN = 12  # "vg_live_AbCd"
ADMIN_KEY_PREFIX_LEN = 13  # "vg_admin_AbCd"
LAST_USED_INTERVAL_S = 60.0  # write api_keys.last_used_at at most this often per key
KEY_CACHE_TTL_S = 5.0  # bound on how long another process's key change may go unseen
KEY_CACHE_MAX = 16_384  # keys remembered (lookups, last-used writes), least recently used out

_ACCOUNT_FIELDS = frozenset({
    "plan_id", "status", "stripe_customer_id", "stripe_subscription_id",
    "past_due_since", "name", "email", "spend_limit_usd",
})


class AccountMethods(SQLCore):
    """Accounts, projects, keys and the audit log (``SQLStore``'s)."""

    def __init__(self, dialect: Dialect) -> None:
        super().__init__(dialect)
        # key id -> when last_used_at was last written (KEY_CACHE_MAX keys at most)
        self._last_used_written: BoundedDict[str, float] = BoundedDict(KEY_CACHE_MAX)
        # key hash -> (key, project, account, fetched at, monotonic s); cleared
        # by every method that changes a key, project or account, and aged out
        # after KEY_CACHE_TTL_S as a bound for changes made by other processes;
        # KEY_CACHE_MAX keys at most (least recently used out).
        self._key_cache: BoundedDict[str, tuple[ApiKey, Project, Account, float]] = \
            BoundedDict(KEY_CACHE_MAX)
        self._key_generation = 0

    async def create_account(self, email: str, plan_id: str, *, name: str = "") -> Account:
        account = Account(id=new_id("acct"), email=email, plan_id=plan_id,
                          created_at=time.time(), name=name)
        await self._write(
            f"INSERT INTO accounts ({ACCOUNT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (account.id, account.email, account.plan_id, account.created_at, account.status,
             None, None, None, account.name),
        )
        return account

    async def get_account(self, account_id: str) -> Account | None:
        row = await self._one(f"SELECT {ACCOUNT_COLS} FROM accounts WHERE id = ?", (account_id,))
        return account_row(row) if row else None

    async def get_account_by_email(self, email: str) -> Account | None:
        row = await self._one(f"SELECT {ACCOUNT_COLS} FROM accounts WHERE email = ?", (email,))
        return account_row(row) if row else None

    async def list_accounts(self) -> list[Account]:
        rows = await self.db.execute_fetchall(
            f"SELECT {ACCOUNT_COLS} FROM accounts ORDER BY created_at, id")
        return [account_row(r) for r in rows]

    async def update_account(self, account_id: str, **fields: Any) -> Account:
        """Set fields of the account.

        Raises:
            KeyError: unknown account.
            TypeError: a field that cannot be set.
        """
        self._invalidate_keys()
        unknown = set(fields) - _ACCOUNT_FIELDS
        if unknown:
            raise TypeError(f"cannot update account fields {sorted(unknown)}")
        if fields:
            names = sorted(fields)
            assignments = ", ".join(f"{n} = ?" for n in names)
            values = [str(fields[n]) if n == "spend_limit_usd" and fields[n] is not None
                      else fields[n] for n in names]
            changed = await self._write(
                f"UPDATE accounts SET {assignments} WHERE id = ?", (*values, account_id))
            self._invalidate_keys()
            if not changed:
                raise KeyError(account_id)
        account = await self.get_account(account_id)
        if account is None:
            raise KeyError(account_id)
        return account

    # ------------------------------------------------------------ projects

    async def create_project(self, account_id: str, name: str) -> Project:
        project = Project(id=new_id("proj"), account_id=account_id, name=name,
                          created_at=time.time())
        await self._write(
            f"INSERT INTO projects ({PROJECT_COLS}) VALUES (?, ?, ?, ?, '[]', '[]', '[]', NULL, NULL,"
            " NULL, NULL)",
            (project.id, project.account_id, project.name, project.created_at),
        )
        return project

    async def get_project(self, project_id: str) -> Project | None:
        row = await self._one(
            f"SELECT {PROJECT_COLS} FROM projects WHERE id = ? AND deleted_at IS NULL",
            (project_id,))
        return project_row(row) if row else None

    async def list_projects(self, account_id: str) -> list[Project]:
        rows = await self.db.execute_fetchall(
            f"SELECT {PROJECT_COLS} FROM projects WHERE account_id = ? AND deleted_at IS NULL"
            " ORDER BY created_at, id", (account_id,))
        return [project_row(r) for r in rows]

    async def set_project_provider_key(self, project_id: str, sealed: str | None,
                                       last4: str | None) -> Project:
        """Store the project's own provider key, encrypted (``sealed``, a
        Fernet token) with its last 4 characters, or remove it (both None).

        Raises:
            KeyError: no such (undeleted) project.
        """
        return await self._set_project_secret(project_id, "provider_key", sealed, last4)

    async def set_project_twilio_token(self, project_id: str, sealed: str | None,
                                       last4: str | None) -> Project:
        """Store the project's own Twilio auth token, encrypted (``sealed``,
        a Fernet token) with its last 4 characters, or remove it (both None).

        Raises:
            KeyError: no such (undeleted) project.
        """
        return await self._set_project_secret(project_id, "twilio_token", sealed, last4)

    async def _set_project_secret(self, project_id: str, name: str, sealed: str | None,
                                  last4: str | None) -> Project:
        """``<name>_sealed`` and ``<name>_last4`` of the project (``name``
        one of the code's own column stems, never input)."""
        self._invalidate_keys()
        changed = await self._write(
            f"UPDATE projects SET {name}_sealed = ?, {name}_last4 = ?"
            " WHERE id = ? AND deleted_at IS NULL", (sealed, last4, project_id))
        self._invalidate_keys()
        project = await self.get_project(project_id) if changed else None
        if project is None:
            raise KeyError(project_id)
        return project

    async def update_project(
        self,
        project_id: str,
        *,
        allowed_origins: tuple[str, ...] | None = None,
        allowed_models: tuple[str, ...] | None = None,
        allowed_ips: tuple[str, ...] | None = None,
    ) -> Project:
        """Replace the project's pins that are given (already normalized).

        Raises:
            KeyError: no such (undeleted) project.
        """
        fields = {name: value for name, value in (
            ("allowed_origins", allowed_origins), ("allowed_models", allowed_models),
            ("allowed_ips", allowed_ips)) if value is not None}
        if fields:
            self._invalidate_keys()
            assignments = ", ".join(f"{name} = ?" for name in fields)
            changed = await self._write(
                f"UPDATE projects SET {assignments} WHERE id = ? AND deleted_at IS NULL",
                (*(orjson.dumps(list(v)).decode() for v in fields.values()), project_id))
            self._invalidate_keys()
            if not changed:
                raise KeyError(project_id)
        project = await self.get_project(project_id)
        if project is None:
            raise KeyError(project_id)
        return project

    async def delete_project(self, project_id: str) -> None:
        """Delete the project (soft: its row stays for sessions and keys) and
        revoke its keys."""
        self._invalidate_keys()
        now = time.time()
        async with self.transaction() as db:
            await db.execute(
                "UPDATE projects SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
                (now, project_id))
            await db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE project_id = ? AND revoked_at IS NULL",
                (now, project_id))
        self._invalidate_keys()

    # ------------------------------------------------------------ API keys

    async def create_api_key(self, project_id: str, name: str = "") -> tuple[ApiKey, str]:
        plaintext = new_api_key()
        key = ApiKey(id=new_id("key"), project_id=project_id,
                     prefix=plaintext[:API_KEY_PREFIX_LEN], key_hash=hash_secret(plaintext),
                     created_at=time.time(), name=name)
        await self._write(
            f"INSERT INTO api_keys ({API_KEY_COLS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
            (key.id, key.project_id, key.prefix, key.key_hash, key.created_at, key.name),
        )
        return key, plaintext

    async def list_api_keys(self, project_id: str) -> list[ApiKey]:
        rows = await self.db.execute_fetchall(
            f"SELECT {API_KEY_COLS} FROM api_keys WHERE project_id = ? ORDER BY created_at, id",
            (project_id,))
        return [api_key_row(r) for r in rows]

    async def revoke_api_key(self, key_id: str) -> None:
        self._invalidate_keys()
        await self._write(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id))
        self._invalidate_keys()

    async def audit(self, actor: str, action: str, account_id: str | None,
                    detail: dict[str, Any] | None = None) -> None:
        await self._write(
            "INSERT INTO audit_log (at, actor, account_id, action, detail) VALUES (?, ?, ?, ?, ?)",
            (time.time(), actor, account_id, action, orjson.dumps(detail or {}).decode()))

    # ------------------------------------------------------------ admin keys

    async def create_admin_key(self, account_id: str, name: str = "") -> tuple[AdminKey, str]:
        plaintext = new_admin_key()
        key = AdminKey(id=new_id("adminkey"), account_id=account_id,
                       prefix=plaintext[:ADMIN_KEY_PREFIX_LEN], key_hash=hash_secret(plaintext),
                       created_at=time.time(), name=name)
        await self._write(
            f"INSERT INTO admin_keys ({ADMIN_KEY_COLS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
            (key.id, key.account_id, key.prefix, key.key_hash, key.created_at, key.name))
        return key, plaintext

    async def list_admin_keys(self, account_id: str) -> list[AdminKey]:
        rows = await self.db.execute_fetchall(
            f"SELECT {ADMIN_KEY_COLS} FROM admin_keys WHERE account_id = ?"
            " ORDER BY created_at, id", (account_id,))
        return [AdminKey(*r) for r in rows]

    async def revoke_admin_key(self, key_id: str) -> None:
        await self._write(
            "UPDATE admin_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id))

    async def find_admin_key(self, plaintext: str) -> tuple[AdminKey, Account] | None:
        """The admin key with that plaintext and its account (revoked ones
        too: ``AdminKey.active`` tells); None if unknown. Not cached, and
        ``last_used_at`` is written on every use (admin keys are rare)."""
        row = await self._one(
            f"SELECT {prefixed(ADMIN_KEY_COLS, 'k')}, {prefixed(ACCOUNT_COLS, 'a')}"
            " FROM admin_keys k JOIN accounts a ON a.id = k.account_id WHERE k.key_hash = ?",
            (hash_secret(plaintext),))
        if row is None:
            return None
        key, account = AdminKey(*row[:8]), account_row(row[8:])
        key.last_used_at = time.time()
        await self._write("UPDATE admin_keys SET last_used_at = ? WHERE id = ?",
                          (key.last_used_at, key.id))
        return key, account

    def _invalidate_keys(self) -> None:
        """Forget cached key lookups (before and after a change, so a lookup
        racing the write cannot cache what it read before)."""
        self._key_cache.clear()
        self._key_generation += 1

    async def find_api_key(self, plaintext: str) -> tuple[ApiKey, Project, Account] | None:
        """The key with that plaintext, its project and account; None if
        unknown. Revoked keys (and keys of deleted projects, which are
        revoked) are returned. ``last_used_at`` is written at most once a
        minute per key (per process). Found keys are cached for
        ``KEY_CACHE_TTL_S`` (copies are returned); any change to a key,
        project or account through this store clears the cache."""
        key_hash = hash_secret(plaintext)
        cached = self._key_cache.get(key_hash)
        if cached is not None and time.monotonic() - cached[3] < KEY_CACHE_TTL_S:
            key, project, account = replace(cached[0]), replace(cached[1]), replace(cached[2])
        else:
            generation = self._key_generation
            row = await self._one(
                f"SELECT {prefixed(API_KEY_COLS, 'k')}, {prefixed(PROJECT_COLS, 'p')},"
                f" {prefixed(ACCOUNT_COLS, 'a')}"
                " FROM api_keys k JOIN projects p ON p.id = k.project_id"
                " JOIN accounts a ON a.id = p.account_id WHERE k.key_hash = ?",
                (key_hash,))
            if row is None:
                return None
            key = api_key_row(row[:N_API_KEY])
            project = project_row(row[N_API_KEY:N_API_KEY + N_PROJECT])
            account = account_row(row[N_API_KEY + N_PROJECT:])
            if generation == self._key_generation:
                self._key_cache[key_hash] = (replace(key), replace(project), replace(account),
                                             time.monotonic())
        now = time.time()
        last = self._last_used_written.get(key.id, key.last_used_at or 0.0)
        if now - last >= LAST_USED_INTERVAL_S:
            self._last_used_written[key.id] = now
            await self._write("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key.id))
        key.last_used_at = self._last_used_written.get(key.id, key.last_used_at)
        return key, project, account

    # ------------------------------------------------------------ ephemeral keys

    async def create_ephemeral_key(
        self,
        project_id: str,
        session: dict[str, Any],
        expires_at: float,
        api_key_id: str | None = None,
    ) -> tuple[EphemeralKey, str]:
        plaintext = new_ephemeral_key()
        key = EphemeralKey(id=new_id("ek"), project_id=project_id,
                           key_hash=hash_secret(plaintext), created_at=time.time(),
                           expires_at=expires_at, api_key_id=api_key_id, session=session)
        # a write of the session path: group committed on PostgreSQL (one
        # round trip and one commit for the mints of a moment); it locks no
        # row another statement writes, so it orders before the sessions'
        await self.dialect.session_statement(
            self, ("", "ek", key.id),
            f"INSERT INTO ephemeral_keys ({EPHEMERAL_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key.id, key.project_id, key.key_hash, key.created_at, key.expires_at,
             key.api_key_id, orjson.dumps(session).decode()),
        )
        return key, plaintext

    async def find_ephemeral_key(
        self, plaintext: str
    ) -> tuple[EphemeralKey, Project, Account] | None:
        """The ephemeral key, its project and account; None if unknown.
        Expired keys are returned (``EphemeralKey.expired(now)`` tells), and
        so are revoked ones: ``EphemeralKey.revoked`` is set when the API key
        that minted it is revoked or its project deleted."""
        row = await self._one(
            f"SELECT {prefixed(EPHEMERAL_COLS, 'e')}, {prefixed(PROJECT_COLS, 'p')},"
            f" {prefixed(ACCOUNT_COLS, 'a')},"
            " (p.deleted_at IS NOT NULL OR k.revoked_at IS NOT NULL)"
            " FROM ephemeral_keys e JOIN projects p ON p.id = e.project_id"
            " JOIN accounts a ON a.id = p.account_id"
            " LEFT JOIN api_keys k ON k.id = e.api_key_id WHERE e.key_hash = ?",
            (hash_secret(plaintext),))
        if row is None:
            return None
        ek = ephemeral_row(row[:N_EPHEMERAL])
        ek.revoked = bool(row[-1])
        end = N_EPHEMERAL + N_PROJECT
        return ek, project_row(row[N_EPHEMERAL:end]), account_row(row[end:-1])
