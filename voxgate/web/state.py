"""What the dashboard's handlers share: ``WebState`` under ``app[WEB]``.

``voxgate.web.app.setup`` builds it once per application; every handler
module (``views``, ``account_views``, ``admin_views``, ``auth``,
``render``) reads it through ``web_state(request)``, so none of them
imports ``app`` (which imports them for its routes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jinja2
from aiohttp import web

from voxgate.models import PlanCatalog
from voxgate.web.db import WebDB
from voxgate.web.security import DashboardLimits

__all__ = ["WebState", "WEB", "web_state", "billing_service"]


@dataclass(eq=False)
class WebState:
    """What the dashboard handlers share."""

    store: Any
    catalog: PlanCatalog
    templates: jinja2.Environment
    secure_cookies: bool
    base_url: str
    db: WebDB | None = None  # set when the store is open
    limits: DashboardLimits = field(default_factory=DashboardLimits)
    # The clock TOTP codes are checked against (Unix seconds): the wall clock;
    # tests set a clock they step, so that a fresh step needs no 30 s wait.
    totp_clock: Callable[[], float] = time.time


WEB = web.AppKey("voxgate.web", WebState)


def web_state(request: web.Request) -> Any:
    """The application's ``WebState`` (``request.app[WEB]``).

    Typed ``Any`` for the handlers: ``WebState.db`` is set by the start-up
    step before the first request is served.
    """
    return request.app[WEB]


def billing_service(app: web.Application) -> Any | None:
    """Billing's service object (``app[BILLING]``, with ``checkout_url``,
    ``portal_url``, ``invoices``), or None when billing is not installed or
    Stripe is not configured (no secret key)."""
    try:
        from voxgate.billing.service import BILLING  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - any import problem means "not configured"
        return None
    try:
        service = app.get(BILLING)
    except Exception:  # noqa: BLE001
        return None
    api = getattr(service, "api", None)
    if service is None or getattr(api, "configured", True) is False:
        return None
    return service
