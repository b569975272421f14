"""Notifications: quota alerts, welcome and notice emails, customer webhooks.

Everything goes through durable queues (``email_outbox``, ``webhook_outbox``)
drained by ``OutboxWorker``: a mail server or customer endpoint that is down
loses nothing; an empty ``smtp.host`` keeps mail queued.

Quota alerts fire at 80 %, 95 % and 100 % of a plan's included sessions
(add-on packs counted in: the plan given is ``voxgate.models.packs.with_packs``'s), at
most once per account, period and threshold (a row in ``quota_alerts``).
Customer webhooks are signed like Stripe's: header
``Voxgate-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiohttp
import aiosmtplib

from voxgate.billing.db import BillingDB, backoff_s
from voxgate.billing.outbound import UnsafeUrl, check_url, client_session
from voxgate.config import Settings
from voxgate.metering.store import MonthlyUsage
from voxgate.models import Account, Plan

__all__ = [
    "THRESHOLDS",
    "QuotaAlert",
    "thresholds_reached",
    "quota_alert_email",
    "sign_payload",
    "verify_signature",
    "Notifier",
    "OutboxWorker",
    "SIGNATURE_HEADER",
]

log = logging.getLogger("voxgate.billing.notify")

THRESHOLDS = (80, 95, 100)
SIGNATURE_HEADER = "Voxgate-Signature"


@dataclass(frozen=True, slots=True)
class QuotaAlert:
    """``threshold`` % of ``included`` sessions reached (``used`` billable)."""

    threshold: int
    used: int
    included: int

    @property
    def exhausted(self) -> bool:
        return self.threshold >= 100

    @property
    def kind(self) -> str:
        return "quota_exhausted" if self.exhausted else "quota_warning"


def thresholds_reached(plan: Plan, billable_sessions: int) -> list[QuotaAlert]:
    """The thresholds ``billable_sessions`` has reached on ``plan`` (none
    for unlimited plans or plans with nothing included)."""
    included = plan.sessions_included
    if not included:
        return []
    return [QuotaAlert(t, billable_sessions, included) for t in THRESHOLDS
            if billable_sessions >= math.ceil(included * t / 100)]


def quota_alert_email(plan: Plan, alert: QuotaAlert, period: str,
                      billing_url: str) -> tuple[str, str]:
    """(subject, body) of a quota alert."""
    if alert.exhausted:
        subject = f"voxgate: you have used all {alert.included} sessions of your {plan.name} plan"
        if plan.hard_cap:
            consequence = ("New sessions are refused until next month unless you upgrade "
                           "your plan or buy an add-on pack.")
        else:
            # An exhausted allowance that is not a hard cap has an overage price.
            assert plan.overage_cents is not None
            consequence = (f"Further billable sessions cost {plan.overage_cents / 100:.2f} each "
                           "this month.")
    else:
        subject = (f"voxgate: {alert.threshold}% of your {plan.name} plan's sessions used")
        consequence = "Consider upgrading before you run out."
    body = (
        f"You have used {alert.used} of the {alert.included} billable sessions included in "
        f"your {plan.name} plan{' and add-on packs' if plan.pack_sessions else ''} for "
        f"{period} ({alert.threshold}%).\n\n"
        f"{consequence}\n\n"
        f"Upgrade or manage your plan: {billing_url}\n\n"
        "Only sessions that work count: failed connections, provider errors and very "
        "short sessions are never billable.\n"
    )
    return subject, body


def sign_payload(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Voxgate-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(secret: str, body: bytes, header: str, *, tolerance_s: int = 300,
                     now: float | None = None) -> bool:
    """Check a ``Voxgate-Signature`` header (for receivers and tests)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        ts = int(parts["t"])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance_s:
        return False
    expected = sign_payload(secret, body, ts).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class Notifier:
    """Queues emails and customer webhooks."""

    def __init__(self, settings: Settings, bdb: BillingDB) -> None:
        self.settings = settings
        self.bdb = bdb
        self._done: set[tuple[str, str, int]] = set()

    @property
    def billing_url(self) -> str:
        return self.settings.base_url + "/billing"

    async def quota(self, account: Account, plan: Plan, usage: MonthlyUsage) -> list[int]:
        """Queue the alerts ``usage`` newly reaches; returns their thresholds."""
        sent = []
        for alert in thresholds_reached(plan, usage.billable_sessions):
            key = (account.id, usage.period, alert.threshold)
            if key in self._done:
                continue
            if not await self.bdb.claim_quota_alert(account.id, usage.period, alert.threshold):
                self._done.add(key)
                continue
            self._done.add(key)
            subject, body = quota_alert_email(plan, alert, usage.period, self.billing_url)
            dedupe = f"quota:{account.id}:{usage.period}:{alert.threshold}"
            await self.bdb.queue_email(account_id=account.id, kind=alert.kind,
                                       to_addr=account.email, subject=subject, body=body,
                                       dedupe_key=dedupe)
            await self.webhook(account.id, alert.kind, {
                "type": alert.kind, "account": account.id, "period": usage.period,
                "plan": plan.id, "threshold": alert.threshold, "sessionsUsed": alert.used,
                "sessionsIncluded": alert.included, "upgradeUrl": self.billing_url,
            }, dedupe)
            await self.bdb.audit("system", account.id, "quota_alert",
                                 {"period": usage.period, "threshold": alert.threshold})
            sent.append(alert.threshold)
        return sent

    async def welcome(self, account: Account, plan: Plan, subscription_id: str) -> None:
        body = (f"Welcome to voxgate {plan.name}!\n\n"
                f"Your subscription is active: {plan.sessions_included or 'unlimited'} billable "
                f"sessions a month, {plan.concurrency or 'unlimited'} at a time. You only pay "
                "for sessions that work.\n\n"
                f"Manage your plan and invoices: {self.billing_url}\n")
        await self.bdb.queue_email(account_id=account.id, kind="welcome", to_addr=account.email,
                                   subject=f"Welcome to voxgate {plan.name}", body=body,
                                   dedupe_key=f"welcome:{account.id}:{subscription_id}")

    async def plan_migrated(self, account: Account, old: str, new: Plan) -> None:
        body = (f"Your voxgate plan '{old}' has been retired. Your account now uses the "
                f"{new.name} plan: {new.sessions_included or 'unlimited'} billable sessions a "
                f"month, {new.concurrency or 'unlimited'} at a time.\n\n"
                f"See your plan: {self.billing_url}\n")
        await self.bdb.queue_email(account_id=account.id, kind="plan_migrated",
                                   to_addr=account.email,
                                   subject=f"Your voxgate plan is now {new.name}", body=body,
                                   dedupe_key=f"migrated:{account.id}:{old}:{new.id}")

    async def webhook(self, account_id: str, event_type: str, data: dict[str, Any],
                      dedupe_key: str | None = None) -> bool:
        """Queue a delivery to the account's webhook, if it set one."""
        if await self.bdb.account_webhook(account_id) is None:
            return False
        payload = {"type": event_type, "created": int(time.time()), "data": data}
        return await self.bdb.queue_webhook(account_id, event_type, payload, dedupe_key)


class OutboxWorker:
    """Sends queued email over SMTP and delivers customer webhooks."""

    def __init__(self, settings: Settings, bdb: BillingDB) -> None:
        self.settings = settings
        self.bdb = bdb
        self._http: aiohttp.ClientSession | None = None

    def _delay(self, attempts: int) -> float:
        b = self.settings.billing
        return backoff_s(attempts, b.retry_base_s, b.retry_max_s)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def run_once(self, now: float | None = None) -> dict[str, int]:
        now = time.time() if now is None else now
        return {"emails": await self.send_emails(now), "webhooks": await self.deliver(now)}

    async def send_emails(self, now: float) -> int:
        """Send the due messages; returns how many went out. An empty
        ``smtp.host`` sends nothing (the queue keeps them)."""
        smtp = self.settings.smtp
        if not smtp.host:
            return 0
        sent = 0
        for item in await self.bdb.due_emails(now):
            msg = EmailMessage()
            msg["From"] = smtp.sender
            msg["To"] = item.to_addr
            msg["Subject"] = item.subject
            msg.set_content(item.body)
            try:
                await aiosmtplib.send(
                    msg, hostname=smtp.host, port=smtp.port,
                    username=smtp.username or None,
                    password=smtp.password.get_secret_value() if smtp.password else None,
                    start_tls=smtp.starttls, use_tls=smtp.use_tls, timeout=smtp.timeout_s,
                )
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.warning("email %d to %s failed (attempt %d): %s", item.id, item.to_addr,
                            item.attempts + 1, error)
                await self.bdb.email_failed(item.id, now + self._delay(item.attempts), error)
                continue
            await self.bdb.email_sent(item.id)
            sent += 1
        return sent

    async def deliver(self, now: float) -> int:
        """POST the due customer webhooks, signed; 2xx = delivered."""
        delivered = 0
        for item in await self.bdb.due_webhooks(now):
            target = await self.bdb.account_webhook(item.account_id)
            if target is None:  # removed since: drop it
                await self.bdb.webhook_delivered(item.id)
                continue
            url, secret = target
            body = item.payload.encode()
            headers = {"Content-Type": "application/json",
                       SIGNATURE_HEADER: sign_payload(secret, body, int(time.time()))}
            dev_mode = self.settings.dev_mode
            if self._http is None:
                self._http = client_session(dev_mode=dev_mode,
                                            timeout=aiohttp.ClientTimeout(total=10))
            try:
                # again, on what is connected to: IP literals here, names in PublicResolver
                await check_url(url, dev_mode=dev_mode, resolve=False)
                async with self._http.post(url, data=body, headers=headers,
                                           allow_redirects=False) as resp:
                    if not 200 <= resp.status < 300:
                        raise aiohttp.ClientResponseError(
                            resp.request_info, (), status=resp.status,
                            message=f"endpoint answered HTTP {resp.status}")
            except (aiohttp.ClientError, OSError, TimeoutError, UnsafeUrl) as exc:
                await self.bdb.webhook_failed(item.id, now + self._delay(item.attempts),
                                              f"{type(exc).__name__}: {exc}")
                continue
            await self.bdb.webhook_delivered(item.id)
            delivered += 1
        return delivered
