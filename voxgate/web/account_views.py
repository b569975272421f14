"""Two-factor sign-in pages (TOTP, RFC 6238; ``twofactor`` does the maths).

- ``GET/POST /signin/2fa``: the second step of a sign-in. The ``vg_2fa``
  cookie names a pending sign-in (``signin_challenges``, 5 minutes, 5
  codes); a right TOTP code or an unused recovery code starts the session
  (marked as having passed the second factor), anything else is a 401 and
  counts as a failed sign-in for the IP and the account (``DashboardLimits``).
- ``GET /account/2fa``: enrolment (a new secret, kept as pending until
  confirmed: its ``otpauth://`` URI and the secret to type in) or, once on,
  its status. ``POST /account/2fa`` with ``action=confirm`` and a code from
  the app: turn it on and show the recovery codes (once; stored hashed);
  ``action=recovery`` with a code: new recovery codes; ``action=disable``
  with a code: turn it off (members only: operators must keep it).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from voxgate.web import twofactor
from voxgate.web.auth import (
    CHALLENGE_COOKIE,
    USER,
    clear_challenge_cookie,
    client_ip,
    form_post,
    member,
    session_token,
)
from voxgate.web.db import User
from voxgate.web.render import render
from voxgate.web.security import safe_next
from voxgate.web.state import web_state
from voxgate.web.views import signed_in, signin_failed, signin_wait, too_many

__all__ = ["challenge_page", "challenge", "twofactor_page", "twofactor_action"]


async def _check_code(request: web.Request, user: User, code: str, secret: str | None = None,
                      now: float | None = None) -> tuple[str, int] | None:
    """(``"totp"``, its time step) or (``"recovery"``, 0) when ``code`` is a
    right code of ``user`` (the TOTP step or the recovery code is spent),
    else None. TOTP steps are those of ``WebState.totp_clock``.
    ``secret``: check against this (pending) secret instead, TOTP only."""
    state = web_state(request)
    db = state.db
    now = time.time() if now is None else now
    key = secret or user.totp_secret
    if key and twofactor.is_totp_code(code):
        step = twofactor.verify_totp(key, code, state.totp_clock(),
                                     0 if secret else user.totp_last_counter)
        if step is not None and (secret is not None or await db.accept_totp_step(user.id, step)):
            return "totp", step
        return None
    recovery = twofactor.recovery_code_shape(code)
    if secret is None and recovery and await db.use_recovery_code(user.id, recovery, now):
        return "recovery", 0
    return None


# ---------------------------------------------------------------- /signin/2fa

async def _pending(request: web.Request) -> tuple[str, Any, User] | None:
    token = request.cookies.get(CHALLENGE_COOKIE)
    if not token:
        return None
    db = web_state(request).db
    found = await db.challenge(token)
    if found is None:
        return None
    user = await db.user_by_id(found.user_id)
    if user is None or not user.has_2fa:
        return None
    return token, found, user


def _back_to_signin() -> web.HTTPSeeOther:
    response = web.HTTPSeeOther("/signin")
    clear_challenge_cookie(response)
    return response


async def challenge_page(request: web.Request) -> web.Response:
    """The code form of a sign-in past its password; without a live
    ``vg_2fa`` cookie → ``/signin``."""
    if await _pending(request) is None:
        raise _back_to_signin()
    return await render(request, "signin_2fa.html", error=None)


@form_post
async def challenge(request: web.Request, form: MultiDictProxy) -> web.Response:
    """Check the code: 303 to the sign-in's ``next`` with a session, 401
    for a wrong code, 429 (``Retry-After``) when throttled, 303 to
    ``/signin`` when the pending sign-in is gone (expired, 5 wrong codes)."""
    state = web_state(request)
    pending = await _pending(request)
    if pending is None:
        raise _back_to_signin()
    token, found, user = pending
    now = time.time()
    wait = state.limits.signin_ip.hit(client_ip(request), now) or signin_wait(request,
                                                                               user.email, now)
    if wait:
        return await too_many(request, wait, "signin_2fa.html")
    code = form.get("code", "")
    checked = await _check_code(request, user, code if isinstance(code, str) else "", now=now)
    if checked is None:
        await state.db.challenge_failed(token)
        await signin_failed(request, user.email, user.account_id, now)
        if await state.db.challenge(token) is None:
            raise _back_to_signin()
        return await render(request, "signin_2fa.html", status=401,
                            error="Wrong code: enter the 6 digits your app shows now, "
                                  "or a recovery code.")
    await state.db.end_challenge(token)
    state.limits.failed_account.clear(user.email)
    if checked[0] == "recovery":
        await state.db.audit(user.email, "user.recovery_code_used", user.account_id,
                             {"left": await state.db.recovery_codes_left(user.id)})
    raise await signed_in(request, user, safe_next(found.next), mfa=True)


# ---------------------------------------------------------------- /account/2fa

def _user(request: web.Request) -> User:
    user = request[USER]
    assert isinstance(user, User)
    return user


async def _enrol_view(request: web.Request, user: User, status: int = 200,
                      error: str | None = None) -> web.Response:
    db = web_state(request).db
    secret = user.totp_pending
    if secret is None:
        secret = twofactor.new_secret()
        await db.set_totp_pending(user.id, secret)
    return await render(
        request, "twofactor.html", status=status, error=error, stage="enrol", secret=secret,
        uri=twofactor.provisioning_uri(secret, user.email),
        qr=twofactor.qr_svg(twofactor.provisioning_uri(secret, user.email)),
        next=safe_next(request.query.get("next"), ""), required=user.is_operator)


@member
async def twofactor_page(request: web.Request) -> web.Response:
    user = _user(request)
    if not user.has_2fa:
        return await _enrol_view(request, user)
    return await render(request, "twofactor.html", stage="on", required=user.is_operator,
                        left=await web_state(request).db.recovery_codes_left(user.id),
                        notice=None)


@member
@form_post
async def twofactor_action(request: web.Request, form: MultiDictProxy) -> web.Response:
    """``action=confirm`` (``code``: turn on, show the recovery codes),
    ``action=recovery`` (``code``: new recovery codes, the old ones void) or
    ``action=disable`` (``code``; members only, 403 for operators). A wrong
    code is a 400 and counts as a failed sign-in; 429 when throttled."""
    state = web_state(request)
    user = _user(request)
    action = form.get("action")
    code = form.get("code", "")
    code = code if isinstance(code, str) else ""
    now = time.time()
    wait = signin_wait(request, user.email, now)
    if action == "confirm" and not user.has_2fa:
        if wait:
            return await too_many(request, wait, "twofactor.html", stage="wait")
        if user.totp_pending is None:
            return await _enrol_view(request, user, 400, "Scan the new secret, then confirm.")
        checked = await _check_code(request, user, code, secret=user.totp_pending, now=now)
        if checked is None:
            await signin_failed(request, user.email, user.account_id, now)
            return await _enrol_view(request, user, 400,
                                     "That code does not match: check the app's clock and "
                                     "enter the 6 digits it shows now.")
        codes = twofactor.new_recovery_codes()
        await state.db.enable_totp(user.id, user.totp_pending, checked[1], codes, now)
        token = session_token(request)
        if token:
            await state.db.mark_session_mfa(token, now)
        await state.db.end_other_sessions(user.id, token)
        await state.db.audit(user.email, "user.2fa_enabled", user.account_id, {})
        nxt = safe_next(str(form.get("next", "")), "/account/2fa")
        return await render(request, "twofactor.html", stage="codes", codes=codes, next=nxt,
                            required=user.is_operator)
    if action == "recovery" and user.has_2fa and user.totp_secret is not None:
        if wait:
            return await too_many(request, wait, "twofactor.html", stage="wait")
        checked = await _check_code(request, user, code, now=now)
        if checked is None or checked[0] != "totp":
            await signin_failed(request, user.email, user.account_id, now)
            return await render(request, "twofactor.html", status=400, stage="on",
                                left=await state.db.recovery_codes_left(user.id),
                                required=user.is_operator,
                                error="Wrong code: enter the 6 digits your app shows now.")
        codes = twofactor.new_recovery_codes()
        await state.db.enable_totp(user.id, user.totp_secret, checked[1], codes, now)
        await state.db.audit(user.email, "user.recovery_codes_renewed", user.account_id, {})
        return await render(request, "twofactor.html", stage="codes", codes=codes,
                            next="/account/2fa", required=user.is_operator)
    if action == "disable" and user.has_2fa:
        if user.is_operator:
            raise web.HTTPForbidden(text="operators must keep two-factor sign-in")
        if wait:
            return await too_many(request, wait, "twofactor.html", stage="wait")
        if await _check_code(request, user, code, now=now) is None:
            await signin_failed(request, user.email, user.account_id, now)
            return await render(request, "twofactor.html", status=400, stage="on",
                                left=await state.db.recovery_codes_left(user.id),
                                required=False, error="Wrong code.")
        await state.db.disable_totp(user.id)
        await state.db.audit(user.email, "user.2fa_disabled", user.account_id, {})
        raise web.HTTPSeeOther("/dashboard?notice=2fa-disabled")
    raise web.HTTPBadRequest(
        text="unknown action: send action=confirm (2FA off), recovery or disable (2FA on)")
