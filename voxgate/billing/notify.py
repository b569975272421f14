"""Notifications: quota alerts, welcome, trial-ending, monthly summary and
notice emails, customer webhooks.

Everything goes through durable queues (``email_outbox``, ``webhook_outbox``)
drained by ``OutboxWorker``: a mail server or customer endpoint that is down
loses nothing; an empty ``smtp.host`` keeps mail queued. Each item is claimed
before it is sent (``BillingDB.claim_email``), so the workers of several
processes send it once.

Quota alerts fire at 80 %, 95 % and 100 % of a plan's included sessions
(add-on packs counted in: the plan given is ``voxgate.models.packs.with_packs``'s), at
most once per account, period and threshold (a row in ``quota_alerts``): when
a session completes (the gateway hook), and in the daily usage-limit check
(``voxgate.jobs``) for those missed while no server was running, which sends
the highest missed threshold only (``catch_up_alerts``).
Trial-ending reminders and monthly usage summaries are queued by the jobs of
``voxgate.jobs``; each is queued once (a ``dedupe_key`` per account and trial
or period).
Customer webhooks are signed like Stripe's: header
``Voxgate-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
Each account has one endpoint (``PUT /v1/webhook``) subscribing to some of
``EVENT_TYPES``; only those are queued for it (``webhook.test``, asked for
by the customer, always is). A delivery's body is ``{"id", "type",
"created", "data"}``: ``id`` stable per event (``"evt_" + session id`` for
``session.completed``), so a receiver can drop the repeats at-least-once
delivery may bring (docs/webhooks.md).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal
from email.message import EmailMessage
from typing import Any

import aiohttp
import aiosmtplib

from voxgate.billing.db import BillingDB, backoff_s
from voxgate.billing.outbound import UnsafeUrl, check_url, client_session
from voxgate.config import Settings
from voxgate.models import Account, Plan
from voxgate.models.figures import minutes_used
from voxgate.store.base import MonthlyUsage

__all__ = [
    "THRESHOLDS",
    "QuotaAlert",
    "thresholds_reached",
    "catch_up_alerts",
    "quota_alert_email",
    "TrialEnd",
    "trial_ending_email",
    "UsageSummary",
    "usage_summary",
    "usage_summary_email",
    "TRIAL_END_KEY",
    "sign_payload",
    "verify_signature",
    "Notifier",
    "OutboxWorker",
    "SIGNATURE_HEADER",
    "SESSION_COMPLETED",
    "TEST_EVENT",
    "ALERT_EVENTS",
    "EVENT_TYPES",
    "event_id_of",
    "session_event_id",
]

log = logging.getLogger("voxgate.billing.notify")

THRESHOLDS = (80, 95, 100)
SIGNATURE_HEADER = "Voxgate-Signature"
WEBHOOK_TIMEOUT_S = 10.0  # one customer-webhook POST
# meta key of a subscription in trial: value "<subscription id> <trial_end unix s>"
TRIAL_END_KEY = "billing:trial_end:"

SESSION_COMPLETED = "session.completed"
TEST_EVENT = "webhook.test"  # POST /v1/webhook/test; sent whatever the endpoint subscribes to
# QuotaAlert.kind, then the spend-limit alerts; /billing/alerts-webhook
ALERT_EVENTS = ("quota_warning", "quota_exhausted", "spend_warning", "spend_limit_reached")
EVENT_TYPES = (SESSION_COMPLETED, *ALERT_EVENTS)  # what an endpoint may subscribe to


CATCH_UP_GRACE_S = 60.0  # a session ended this long ago without its event: the hook missed it
CATCH_UP_WINDOW_S = 6 * 3600.0  # catch_up_sessions looks at sessions started this far back
# (beyond relay.max_session_s)


def session_event_id(session_id: str) -> str:
    """The ``id`` of a session's ``session.completed`` event: one per session."""
    return "evt_" + session_id


def event_id_of(dedupe_key: str | None) -> str:
    """The ``id`` of an event queued under ``dedupe_key`` (the same key, the
    same id: ``"evt_"`` + 24 hex chars of its SHA-256); a fresh random one
    when there is no key."""
    if dedupe_key is None:
        return "evt_" + secrets.token_hex(12)
    return "evt_" + hashlib.sha256(dedupe_key.encode()).hexdigest()[:24]


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


def catch_up_alerts(plan: Plan, billable_sessions: int,
                    sent: Collection[int]) -> tuple[QuotaAlert | None, list[int]]:
    """The alerts a check after the fact owes: (the highest threshold reached
    and not sent, to send; the lower unsent ones it supersedes, to record as
    done without a message). ``(None, [])`` when nothing is owed."""
    owed = [a for a in thresholds_reached(plan, billable_sessions) if a.threshold not in sent]
    if not owed:
        return None, []
    return owed[-1], [a.threshold for a in owed[:-1]]


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


@dataclass(frozen=True, slots=True)
class TrialEnd:
    """A Stripe subscription in trial: ``trial_end`` in Unix seconds."""

    account_id: str
    subscription_id: str
    trial_end: float


def trial_ending_email(plan: Plan, trial_end: float, billing_url: str) -> tuple[str, str]:
    """(subject, body) of the reminder that a trial ends at ``trial_end`` (Unix s)."""
    day = time.strftime("%Y-%m-%d", time.gmtime(trial_end))
    subject = f"voxgate: your {plan.name} trial ends on {day}"
    price = f"{plan.price_cents / 100:.2f} a month"
    if plan.overage_cents is not None:
        price += (f" plus {plan.overage_cents / 100:.2f} per billable session beyond the "
                  f"{plan.sessions_included or 0} included")
    body = (
        f"Your free trial of the voxgate {plan.name} plan ends on {day} (UTC).\n\n"
        f"After that the subscription continues at {price}, charged to the payment "
        "method given at checkout.\n\n"
        f"Nothing to do to keep it. To change or cancel the plan: {billing_url}\n"
    )
    return subject, body


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """What the monthly summary of one account and period says.

    Attributes:
        minutes_used: ``voxgate.models.figures.minutes_used`` of the period.
        overage_sessions: billable sessions beyond the included ones (plans
            with an overage price; 0 otherwise).
        cost_cents: ``Plan.cost_cents(billable_sessions)``: subscription and overage.
    """

    account_id: str
    period: str
    plan_id: str
    plan_name: str
    sessions: int
    billable_sessions: int
    sessions_included: int | None
    overage_sessions: int
    minutes_used: float
    audio_seconds: float
    cost_cents: int


def usage_summary(plan: Plan, usage: MonthlyUsage, pack_covered: int = 0) -> UsageSummary:
    """The summary of ``usage`` (one account's period) on ``plan`` (pure);
    ``pack_covered`` of its billable sessions were paid by add-on packs and
    are neither overage nor charged."""
    overage = 0
    if plan.overage_cents is not None:
        overage = max(0, usage.billable_sessions - (plan.sessions_included or 0) - pack_covered)
    return UsageSummary(
        account_id=usage.account_id, period=usage.period, plan_id=plan.id,
        plan_name=plan.name, sessions=usage.sessions,
        billable_sessions=usage.billable_sessions, sessions_included=plan.sessions_included,
        overage_sessions=overage, minutes_used=minutes_used(usage.minutes_used),
        audio_seconds=round(usage.audio_seconds, 1),
        cost_cents=plan.cost_cents(usage.billable_sessions, pack_covered))


def usage_summary_email(summary: UsageSummary, billing_url: str) -> tuple[str, str]:
    """(subject, body) of a monthly usage summary."""
    s = summary
    included = "unlimited" if s.sessions_included is None else f"{s.sessions_included}"
    lines = [
        f"Your voxgate usage for {s.period} ({s.plan_name} plan):",
        "",
        f"  Billable sessions: {s.billable_sessions} of {included} included",
        f"  All sessions:      {s.sessions} (only billable ones count)",
        f"  Minutes used:      {s.minutes_used:.1f}",
        f"  Audio exchanged:   {s.audio_seconds:.1f} s",
    ]
    if s.overage_sessions:
        lines.append(f"  Overage sessions:  {s.overage_sessions}")
    lines += ["", f"Cost of the month: {s.cost_cents / 100:.2f}", "",
              f"Invoices and plan: {billing_url}", ""]
    return f"voxgate: your usage for {s.period}", "\n".join(lines)


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
            if await self._alert(account, plan, usage.period, alert):
                sent.append(alert.threshold)
            self._done.add(key)
        return sent

    async def catch_up(self, account: Account, plan: Plan, usage: MonthlyUsage) -> list[int]:
        """The alerts of ``usage`` missed so far (``catch_up_alerts``): the
        highest is queued, the lower ones are recorded as superseded. Returns
        the thresholds queued (none or one)."""
        sent = await self.bdb.quota_alerts(account.id, usage.period)
        alert, superseded = catch_up_alerts(plan, usage.billable_sessions, sent)
        if alert is None:
            return []
        for threshold in superseded:
            if await self.bdb.claim_quota_alert(account.id, usage.period, threshold):
                await self.bdb.audit("system", account.id, "quota_alert_superseded",
                                     {"period": usage.period, "threshold": threshold,
                                      "by": alert.threshold})
        return [alert.threshold] if await self._alert(account, plan, usage.period, alert) else []

    async def _alert(self, account: Account, plan: Plan, period: str, alert: QuotaAlert) -> bool:
        """Queue one alert's email and webhook, then claim it; True if this
        call claimed it. Queueing first (each idempotent by its dedupe key)
        means a crash between the two steps loses nothing: the next attempt
        finds the messages queued already and only claims."""
        if alert.threshold in await self.bdb.quota_alerts(account.id, period):
            return False
        subject, body = quota_alert_email(plan, alert, period, self.billing_url)
        dedupe = f"quota:{account.id}:{period}:{alert.threshold}"
        await self.bdb.queue_email(account_id=account.id, kind=alert.kind,
                                   to_addr=account.email, subject=subject, body=body,
                                   dedupe_key=dedupe)
        await self.webhook(account.id, alert.kind, {
            "type": alert.kind, "account": account.id, "period": period,
            "plan": plan.id, "threshold": alert.threshold, "sessionsUsed": alert.used,
            "sessionsIncluded": alert.included, "upgradeUrl": self.billing_url,
        }, dedupe)
        if not await self.bdb.claim_quota_alert(account.id, period, alert.threshold):
            return False
        await self.bdb.audit("system", account.id, "quota_alert",
                             {"period": period, "threshold": alert.threshold})
        return True

    async def spend(self, account: Account, period: str, spent_micros: int,
                    limit_usd: Decimal, thresholds: list[int]) -> list[int]:
        """Queue the spend-limit alerts (80/95/100 % of the account's monthly
        provider-cost cap) ``thresholds`` newly reaches, email and webhook
        (``spend_warning``, or ``spend_limit_reached`` at 100 %), each once
        per account, period and threshold across processes (queued under a
        dedupe key, then claimed: a crash in between loses nothing). Returns
        the thresholds this call claimed."""
        sent = []
        spent = Decimal(spent_micros) / 1_000_000
        for threshold in thresholds:
            key = (account.id, f"spend:{period}", threshold)
            if key in self._done:
                continue
            kind = "spend_limit_reached" if threshold >= 100 else "spend_warning"
            dedupe = f"spend:{account.id}:{period}:{threshold}"
            if threshold >= 100:
                subject = f"voxgate: your provider spend limit of ${limit_usd} is reached"
                consequence = ("New sessions are refused until next month or until the limit "
                               "is raised; sessions already running finish.")
            else:
                subject = f"voxgate: {threshold}% of your provider spend limit used"
                consequence = "New sessions will be refused when it is reached."
            body = (f"Your sessions in {period} have cost ${spent:.2f} of voice-provider usage, "
                    f"{threshold}% of this account's monthly limit of ${limit_usd}.\n\n"
                    f"{consequence}\n\nManage your plan: {self.billing_url}\n")
            await self.bdb.queue_email(account_id=account.id, kind=kind, to_addr=account.email,
                                       subject=subject, body=body, dedupe_key=dedupe)
            await self.webhook(account.id, kind, {
                "type": kind, "account": account.id, "period": period, "threshold": threshold,
                "spentUsd": f"{spent:.6f}", "limitUsd": str(limit_usd)}, dedupe)
            if await self.bdb.store.claim_spend_alert(account.id, period, threshold, time.time()):
                await self.bdb.audit("system", account.id, "spend_alert",
                                     {"period": period, "threshold": threshold})
                sent.append(threshold)
            self._done.add(key)
        return sent

    async def note_trial(self, account_id: str, sub: dict[str, Any]) -> None:
        """Remember a subscription in trial (Stripe ``status`` ``trialing``
        with a ``trial_end``) for the trial-ending reminder; forget it once
        that subscription is out of trial (an event of another, older
        subscription of the account changes nothing)."""
        key = TRIAL_END_KEY + account_id
        trial_end = sub.get("trial_end")
        sub_id = sub.get("id")
        if not isinstance(sub_id, str):
            return
        if sub.get("status") == "trialing" and isinstance(trial_end, (int, float)):
            await self.bdb.store.set_meta(key, f"{sub_id} {float(trial_end)}")
            return
        noted = await self.bdb.store.get_meta(key)
        if noted and noted.partition(" ")[0] == sub_id:
            await self.bdb.store.set_meta(key, "")

    async def trials(self) -> list[TrialEnd]:
        """Every subscription in trial ``note_trial`` remembers."""
        out = []
        for key, value in await self.bdb.meta_with_prefix(TRIAL_END_KEY):
            sub_id, _, at = value.partition(" ")
            if sub_id and at:
                out.append(TrialEnd(key[len(TRIAL_END_KEY):], sub_id, float(at)))
        return out

    async def trial_ending(self, account: Account, plan: Plan, trial: TrialEnd) -> bool:
        """Queue the trial-ending reminder; False if it was queued before."""
        subject, body = trial_ending_email(plan, trial.trial_end, self.billing_url)
        return await self.bdb.queue_email(
            account_id=account.id, kind="trial_ending", to_addr=account.email,
            subject=subject, body=body,
            dedupe_key=f"trial_ending:{account.id}:{trial.subscription_id}")

    async def monthly_summary(self, account: Account, summary: UsageSummary) -> bool:
        """Queue the monthly usage summary; False if it was queued before."""
        subject, body = usage_summary_email(summary, self.billing_url)
        return await self.bdb.queue_email(
            account_id=account.id, kind="usage_summary", to_addr=account.email,
            subject=subject, body=body, dedupe_key=f"summary:{account.id}:{summary.period}")

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
                      dedupe_key: str | None = None, *, event_id: str | None = None) -> bool:
        """Queue ``{"id", "type", "created", "data"}`` for the account's
        webhook endpoint, if it has one subscribed to ``event_type``
        (``TEST_EVENT``: any endpoint). ``event_id`` defaults to
        ``event_id_of(dedupe_key)``; ``dedupe_key`` to ``event_id``. Returns
        False when nothing was queued: no endpoint, not subscribed, or
        queued before under the same key."""
        endpoint = await self.bdb.webhook_endpoint(account_id)
        if endpoint is None or (event_type != TEST_EVENT and event_type not in endpoint.events):
            return False
        event_id = event_id or event_id_of(dedupe_key)
        payload = {"id": event_id, "type": event_type, "created": int(time.time()), "data": data}
        return await self.bdb.queue_webhook(account_id, event_type, payload,
                                            dedupe_key if dedupe_key is not None else event_id)

    async def session_completed(self, account_id: str, session: dict[str, Any]) -> bool:
        """Queue the ``session.completed`` event of ``session`` (the object
        ``GET /v1/sessions/{id}`` returns), once per session: its id is
        ``session_event_id``, and a second call (another process, a retried
        completion) queues nothing. False when nothing was queued."""
        event_id = session_event_id(session["id"])
        return await self.webhook(account_id, SESSION_COMPLETED, session, event_id,
                                  event_id=event_id)

    async def catch_up_sessions(self, now: float, *, grace_s: float = CATCH_UP_GRACE_S,
                                limit: int = 500) -> int:
        """Queue the ``session.completed`` events that no completion hook
        queued: sessions completed by a sweep (``instance_lost``,
        ``interrupted``) or by a process that died before its hook ran,
        ended more than ``grace_s`` ago (the hook's own turn) and started
        within ``relay.max_session_s`` + ``CATCH_UP_WINDOW_S`` of ``now``
        (Unix s; the window is at most half ``retention.outbox_days``, so a
        delivered event's pruned row never makes it look missing). For a
        scheduled job (``voxgate.jobs``); returns how many were queued."""
        from voxgate.proxy.api import session_body

        window_s = CATCH_UP_WINDOW_S
        if self.settings.retention.outbox_days > 0:  # never past the pruning of delivered rows
            window_s = min(window_s, self.settings.retention.outbox_days * 86400 / 2)
        started_since = now - self.settings.relay.max_session_s - window_s
        queued = 0
        for session_id, account_id in await self.bdb.sessions_without_event(
                SESSION_COMPLETED, session_event_id(""), started_since, now - grace_s, limit):
            record = await self.bdb.store.get_session(session_id)
            if record is not None and await self.session_completed(
                    account_id, session_body(self.settings, record)):
                queued += 1
        return queued

    async def test_event(self, account_id: str) -> str | None:
        """Queue a ``webhook.test`` event (a fresh id each time) for the
        account's endpoint; its id, or None when the account has none."""
        endpoint = await self.bdb.webhook_endpoint(account_id)
        if endpoint is None:
            return None
        event_id = event_id_of(None)
        await self.webhook(account_id, TEST_EVENT, {
            "account": account_id, "url": endpoint.url, "events": list(endpoint.events),
            "message": "a test event sent from voxgate"}, event_id=event_id)
        return event_id


class OutboxWorker:
    """Sends queued email over SMTP and delivers customer webhooks."""

    def __init__(self, settings: Settings, bdb: BillingDB) -> None:
        self.settings = settings
        self.bdb = bdb
        self._http: aiohttp.ClientSession | None = None

    def _delay(self, attempts: int) -> float:
        b = self.settings.billing
        return backoff_s(attempts, b.retry_base_s, b.retry_max_s)

    def _claim_s(self) -> float:
        """How long a claimed item is left to its worker: past any send's
        timeout (SMTP, webhook POST), then it is due again."""
        return 60.0 + 3 * max(self.settings.smtp.timeout_s, WEBHOOK_TIMEOUT_S)

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
            if not await self.bdb.claim_email(item.id, now, now + self._claim_s()):
                continue  # another worker has it
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
            if not await self.bdb.claim_webhook(item.id, now, now + self._claim_s()):
                continue
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
                                            timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))
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
