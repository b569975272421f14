"""Domain types: accounts, projects, keys, plans, sessions, verdicts, and the
OpenAI Realtime vocabulary. No I/O beyond reading a catalog file."""

from voxgate.models.accounts import (
    ADMIN_KEY_PREFIX,
    API_KEY_PREFIX,
    EPHEMERAL_KEY_PREFIX,
    Account,
    AdminKey,
    ApiKey,
    EphemeralKey,
    Principal,
    Project,
    hash_secret,
    new_admin_key,
    new_api_key,
    new_ephemeral_key,
    new_id,
)
from voxgate.models.plans import Plan, PlanCatalog, default_catalog_path, load_catalog
from voxgate.models.realtime import PCM24K, AudioFormat, audio_format_from_session
from voxgate.models.sessions import Measurements, Reason, SessionRecord, Verdict

__all__ = [
    "ADMIN_KEY_PREFIX",
    "API_KEY_PREFIX",
    "EPHEMERAL_KEY_PREFIX",
    "Account",
    "AdminKey",
    "ApiKey",
    "AudioFormat",
    "EphemeralKey",
    "Measurements",
    "PCM24K",
    "Plan",
    "PlanCatalog",
    "Principal",
    "Project",
    "Reason",
    "SessionRecord",
    "Verdict",
    "audio_format_from_session",
    "default_catalog_path",
    "hash_secret",
    "load_catalog",
    "new_admin_key",
    "new_api_key",
    "new_ephemeral_key",
    "new_id",
]
