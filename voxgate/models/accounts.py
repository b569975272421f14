"""Accounts, projects, API keys and ephemeral client secrets.

Secrets are never stored: a project API key (``vg_live_…``), an account admin
key (``vg_admin_…``) and an ephemeral key (``ek_…``) are kept as SHA-256 hex
digests; only a short prefix stays visible.

Scopes: an ephemeral key opens realtime sessions of its project only; a
project key works for its own project (sessions, ephemeral keys, its own
session records); an admin key, created by the account owner, reads the
whole account and acts on its billing (as OpenAI's admin keys).
Times are Unix seconds (float) unless a name says otherwise.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

__all__ = [
    "Account",
    "Project",
    "ApiKey",
    "AdminKey",
    "EphemeralKey",
    "Principal",
    "new_id",
    "new_api_key",
    "new_ephemeral_key",
    "new_admin_key",
    "hash_secret",
    "API_KEY_PREFIX",
    "ADMIN_KEY_PREFIX",
    "EPHEMERAL_KEY_PREFIX",
]

API_KEY_PREFIX = "vg_live_"
ADMIN_KEY_PREFIX = "vg_admin_"
EPHEMERAL_KEY_PREFIX = "ek_"


def new_id(prefix: str) -> str:
    """An id like ``acct_3f9c…`` (prefix + 24 hex chars)."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def hash_secret(secret: str) -> str:
    """SHA-256 hex digest of a key; what the store keeps and looks up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_api_key() -> str:
    """A fresh project API key: ``vg_live_`` + 40 url-safe characters."""
    return API_KEY_PREFIX + secrets.token_urlsafe(30)


def new_admin_key() -> str:
    """A fresh account admin key: ``vg_admin_`` + 40 url-safe characters."""
    return ADMIN_KEY_PREFIX + secrets.token_urlsafe(30)


def new_ephemeral_key() -> str:
    """A fresh ephemeral client secret: ``ek_`` + 40 url-safe characters."""
    return EPHEMERAL_KEY_PREFIX + secrets.token_urlsafe(30)


@dataclass(slots=True)
class Account:
    """The paying customer.

    Attributes:
        status: ``active``, ``past_due`` (payment failed, in grace) or ``canceled``.
        past_due_since: Unix seconds when payment first failed, or None.
        spend_limit_usd: the operator's monthly cap on this account's
            provider cost (USD), overriding its plan's ``spend_limit_usd``;
            None = the plan's.
    """

    id: str
    email: str
    plan_id: str
    created_at: float
    status: str = "active"
    stripe_customer_id: str | None = None
    stripe_subscription_id: str | None = None
    past_due_since: float | None = None
    name: str = ""
    spend_limit_usd: Decimal | None = None


@dataclass(slots=True)
class Project:
    """A project of an account.

    Attributes:
        allowed_origins: web origins (``https://app.example.com``, as browsers
            send them in ``Origin``) from which the project's ephemeral keys
            may be used; empty means any origin (as with OpenAI).
        allowed_models: the models the project's sessions and ephemeral keys
            may use; empty means any.
        allowed_ips: client networks (CIDR, ``203.0.113.0/24``) its API keys
            may be used from; empty means any.
        provider_key_sealed: the project's own OpenAI API key (BYOK),
            encrypted (``voxgate.proxy.provider_keys``: Fernet token); None =
            sessions use the operator's key. Never rendered anywhere.
        provider_key_last4: the last 4 characters of that key, the only part
            ever shown again.
        twilio_token_sealed: the project's own Twilio auth token, encrypted
            as ``provider_key_sealed`` is; when set, its phone calls'
            ``X-Twilio-Signature`` is checked with it
            (``voxgate.proxy.telephony``). Never rendered anywhere.
        twilio_token_last4: the last 4 characters of that token.
    """

    id: str
    account_id: str
    name: str
    created_at: float
    allowed_origins: tuple[str, ...] = ()
    allowed_models: tuple[str, ...] = ()
    allowed_ips: tuple[str, ...] = ()
    provider_key_sealed: str | None = field(default=None, repr=False)
    provider_key_last4: str | None = None
    twilio_token_sealed: str | None = field(default=None, repr=False)
    twilio_token_last4: str | None = None


@dataclass(slots=True)
class ApiKey:
    """A project API key as stored: ``prefix`` is the visible start of the key
    (``vg_live_ab12…``), ``key_hash`` its SHA-256."""

    id: str
    project_id: str
    prefix: str
    key_hash: str
    created_at: float
    name: str = ""
    revoked_at: float | None = None
    last_used_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(slots=True)
class EphemeralKey:
    """An ephemeral client secret minted at ``POST /v1/realtime/client_secrets``.

    It may open sessions for ``project_id`` until ``expires_at`` (Unix s);
    ``session`` is the session configuration it carries (the GA ``session``
    object of the request), applied to every session it opens.
    """

    id: str
    project_id: str
    key_hash: str
    created_at: float
    expires_at: float
    api_key_id: str | None = None
    session: dict[str, Any] = field(default_factory=dict)
    # Derived at lookup, not stored: the API key that minted it is revoked
    # (or its project deleted), so it is revoked too.
    revoked: bool = False

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


@dataclass(slots=True)
class AdminKey:
    """An account admin key as stored (``prefix`` visible, ``key_hash`` its
    SHA-256): account-wide reads and billing actions, no sessions."""

    id: str
    account_id: str
    prefix: str
    key_hash: str
    created_at: float
    name: str = ""
    revoked_at: float | None = None
    last_used_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(slots=True)
class Principal:
    """Who is calling: resolved from a project API key or an ephemeral key.

    ``rate_key`` names the bucket for requests-per-minute limits (the API
    key's id; an ephemeral key counts against the API key that minted it).
    """

    account: Account
    project: Project
    api_key: ApiKey | None = None
    ephemeral: EphemeralKey | None = None

    @property
    def rate_key(self) -> str:
        if self.api_key is not None:
            return self.api_key.id
        if self.ephemeral is not None and self.ephemeral.api_key_id:
            return self.ephemeral.api_key_id
        return self.project.id
