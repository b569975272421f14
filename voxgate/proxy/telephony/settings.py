"""Telephony settings: ``[telephony]`` of voxgate.toml
(``voxgate.config.TelephonySettings``; ``VOXGATE_TELEPHONY__TWILIO_AUTH_TOKEN``
in the environment) and the app key the Twilio route reads them from."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from voxgate.config import TelephonySettings

__all__ = ["TelephonySettings", "TWILIO_AUTH_TOKEN", "telephony_settings"]

TWILIO_AUTH_TOKEN = web.AppKey("twilio_auth_token", str)
"""The Twilio auth token the ``X-Twilio-Signature`` of stream upgrades is
checked with (absent: not checked)."""


def telephony_settings(settings: Any) -> TelephonySettings:
    """``settings.telephony`` (defaults when ``settings`` is None)."""
    found = getattr(settings, "telephony", None)
    return found if isinstance(found, TelephonySettings) else TelephonySettings()
