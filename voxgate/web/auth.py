"""Dashboard sign-in: argon2 password hashes, server-side cookie sessions,
CSRF tokens and the guards of the pages.

- The session cookie (``vg_session``) holds a random token; the server keeps
  its HMAC in ``web_sessions`` with the user and the session's CSRF token.
  It is HttpOnly, SameSite=Lax, Path=/ and Secure when
  ``settings.web.secure_cookies`` or when ``settings.public_url`` is https.
- Two-factor sign-in (TOTP, ``twofactor``): a user with it enrolled gets,
  after the right password, a ``vg_2fa`` cookie for a pending sign-in
  (``signin_challenges``) and the code form; the session starts only with a
  right code or recovery code and is marked as having passed it
  (``request[MFA]``). Operators must have it: the ``operator`` guard sends
  one without it to ``/account/2fa`` to enroll first.
- Passwords are checked against a dummy argon2 hash when the email is
  unknown, so that both answers take as long.
- Every form carries ``csrf_token``: the session's token when signed in, or
  (sign-in and sign-up forms) the value of the ``vg_csrf`` cookie (a
  double-submit token). A POST to a form handler without the right token is
  refused with 403 before the handler runs (``form_post``).
- ``web_middleware`` resolves the cookie on every request and, for signed-in
  users, sets ``request[ACCOUNT_KEY]`` so the JSON APIs (``/v1/sessions``,
  ``/billing/usage``) work with the cookie. On unsafe methods of routes
  that are not the dashboard's own forms the cookie only counts with a
  matching ``X-CSRF-Token`` header.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from multidict import MultiDictProxy

from voxgate.models import Account, PlanCatalog
from voxgate.proxy.api import ACCOUNT_KEY
from voxgate.web.db import CHALLENGE_TTL_S, SESSION_TTL_S, User, WebDB
from voxgate.web.security import MIN_PASSWORD_LEN, password_problem, safe_next
from voxgate.web.state import WebState, web_state

__all__ = [
    "SESSION_COOKIE",
    "CSRF_COOKIE",
    "USER",
    "CSRF",
    "hash_password",
    "verify_password",
    "web_middleware",
    "form_post",
    "member",
    "operator",
    "set_session_cookie",
    "clear_session_cookie",
    "create_operator",
    "load_secret",
    "safe_next",
    "MIN_PASSWORD_LEN",
    "MFA",
    "CHALLENGE_COOKIE",
    "verify_or_dummy",
    "read_form",
    "client_ip",
    "secure_cookies",
    "PasswordRefused",
    "set_challenge_cookie",
    "clear_challenge_cookie",
    "session_token",
    "ensure_demo_user",
    "DEMO_EMAIL",
    "DEMO_PASSWORD_FILE",
]

SESSION_COOKIE = "vg_session"
DEMO_EMAIL = "demo@voxgate.local"
DEMO_PASSWORD_FILE = "demo_password"
CSRF_COOKIE = "vg_csrf"
CHALLENGE_COOKIE = "vg_2fa"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
USER = web.RequestKey("voxgate.web.user", object)
CSRF = web.RequestKey("voxgate.web.csrf", str)
MFA = web.RequestKey("voxgate.web.mfa", bool)  # the session passed the second factor
_TOKEN = web.RequestKey("voxgate.web.token", str)
_NEW_CSRF_COOKIE = web.RequestKey("voxgate.web.new_csrf", str)
_SAFE = ("GET", "HEAD", "OPTIONS")

_hasher = PasswordHasher()
_dummy_hash: str | None = None

Handler = Callable[..., Awaitable[web.StreamResponse]]


class PasswordRefused(ValueError):
    """A password that the policy refuses (``password_problem``); the
    message says why."""


async def hash_password(password: str) -> str:
    """An argon2id hash (computed off the event loop)."""
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


async def verify_or_dummy(user: User | None, password: str) -> bool:
    """``verify_password`` for ``user``; for no user, the same work against
    a dummy hash (made once per process), and False: an unknown email
    answers as slowly as a wrong password."""
    global _dummy_hash
    if user is not None:
        return await verify_password(user.password_hash, password)
    if _dummy_hash is None:
        _dummy_hash = await hash_password(secrets.token_urlsafe(24))
    await verify_password(_dummy_hash, password)
    return False


def secure_cookies(configured: bool, public_url: str) -> bool:
    """Whether cookies get ``Secure``: configured so, or served over https."""
    return configured or public_url.strip().lower().startswith("https://")


def client_ip(request: web.Request) -> str:
    """The peer address of the connection (forwarding headers are not
    trusted)."""
    return request.remote or "unknown"


async def read_form(request: web.Request) -> MultiDictProxy[Any]:
    """The parsed form body.

    Raises:
        HTTPBadRequest: not a form aiohttp can parse (multipart without or
            with a wrong boundary, bytes that are not UTF-8).
    """
    try:
        return await request.post()
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise web.HTTPBadRequest(
            text="could not read the form: send application/x-www-form-urlencoded or "
                 "multipart/form-data (with its boundary) in UTF-8") from exc


def load_secret(configured: str | None, data_dir: Path) -> bytes:
    """The cookie-hashing secret: the configured one, else
    ``<data_dir>/session_secret`` (created, mode 0600, on first use).
    Processes starting at once on one data directory agree on one secret:
    each writes its own candidate to a private file and links it into place
    (atomic, never over an existing file); the losers read the winner's."""
    if configured:
        return configured.encode()
    path = Path(data_dir) / "session_secret"
    if path.is_file():
        return path.read_text().strip().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = path.with_name(f".session_secret.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(48) + "\n")
    try:
        os.link(candidate, path)
    except FileExistsError:
        pass  # another process got there first: its secret is the one
    finally:
        candidate.unlink(missing_ok=True)
    return path.read_text().strip().encode()


def _web(request: web.Request) -> Any:
    return web_state(request)


@web.middleware
async def web_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = _web(request)
    request[USER] = None
    request[MFA] = False
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        found = await state.db.session_user(token)
        if found is not None:
            user, csrf, mfa_at = found
            account = await state.store.get_account(user.account_id)
            if account is not None:
                request[USER] = user
                request[CSRF] = csrf
                request[MFA] = mfa_at is not None
                request[_TOKEN] = token
                own_form = getattr(request.match_info.handler, "web_form", False)
                if request.method in _SAFE or own_form or hmac.compare_digest(
                        request.headers.get(CSRF_HEADER, ""), csrf):
                    request[ACCOUNT_KEY] = account
    if CSRF not in request:
        anon = request.cookies.get(CSRF_COOKIE)
        if not anon:
            anon = secrets.token_urlsafe(32)
            request[_NEW_CSRF_COOKIE] = anon
        request[CSRF] = anon
    response = await handler(request)
    if _NEW_CSRF_COOKIE in request and not response.prepared and \
            response.content_type == "text/html":
        response.set_cookie(CSRF_COOKIE, request[_NEW_CSRF_COOKIE], httponly=True,
                            samesite="Lax", path="/", secure=state.secure_cookies)
    return response


def _signin_redirect(request: web.Request) -> web.HTTPSeeOther:
    return web.HTTPSeeOther("/signin?next=" + quote(request.path_qs, safe=""))


def form_post(fn: Handler) -> Handler:
    """A POST form handler: the CSRF token is checked (403 without the
    right one) and the parsed form is passed as second argument."""

    @functools.wraps(fn)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        form = await read_form(request)
        sent = form.get(CSRF_FIELD)
        expected = request.get(CSRF)
        if not isinstance(sent, str) or not expected or (
                request.get(USER) is None and _NEW_CSRF_COOKIE in request) or \
                not hmac.compare_digest(sent, expected):
            raise web.HTTPForbidden(text="invalid or missing CSRF token; reload the page")
        return await fn(request, form)

    wrapper.web_form = True  # type: ignore[attr-defined]
    return wrapper


def member(fn: Handler) -> Handler:
    """Pages for signed-in users: others are redirected to ``/signin``."""

    @functools.wraps(fn)
    async def wrapper(request: web.Request, *args: Any) -> web.StreamResponse:
        if request.get(USER) is None:
            raise _signin_redirect(request)
        return await fn(request, *args)

    wrapper.web_form = getattr(fn, "web_form", False)  # type: ignore[attr-defined]
    return wrapper


def operator(fn: Handler) -> Handler:
    """Operator pages: signed-out → ``/signin``, other users → 403; an
    operator without two-factor sign-in → ``/account/2fa`` to enroll; a
    session that did not pass the second factor → ended, ``/signin``."""

    @functools.wraps(fn)
    async def wrapper(request: web.Request, *args: Any) -> web.StreamResponse:
        user: User | None = request.get(USER)
        if user is None:
            raise _signin_redirect(request)
        if not user.is_operator:
            raise web.HTTPForbidden(text="operators only")
        if not user.has_2fa:
            raise web.HTTPSeeOther("/account/2fa?next=" + quote(request.path_qs, safe=""))
        if not request.get(MFA):
            token = session_token(request)
            if token:
                await _web(request).db.end_session(token)
            response = _signin_redirect(request)
            clear_session_cookie(response)
            raise response
        return await fn(request, *args)

    wrapper.web_form = getattr(fn, "web_form", False)  # type: ignore[attr-defined]
    return wrapper


def set_session_cookie(response: web.StreamResponse, token: str, secure: bool) -> None:
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Lax", path="/",
                        secure=secure, max_age=int(SESSION_TTL_S))


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/")


def set_challenge_cookie(response: web.StreamResponse, token: str, secure: bool) -> None:
    response.set_cookie(CHALLENGE_COOKIE, token, httponly=True, samesite="Strict", path="/signin",
                        secure=secure, max_age=int(CHALLENGE_TTL_S))


def clear_challenge_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(CHALLENGE_COOKIE, path="/signin")


def session_token(request: web.Request) -> str | None:
    return request.get(_TOKEN)


async def create_operator(store: Any, db: WebDB, catalog: PlanCatalog, email: str,
                          password: str | None) -> tuple[User, str | None]:
    """Make ``email`` an operator: promote its user, or create the user (on
    the account with that email, else on a new account on the default plan).

    Returns (user, generated password or None when one was given or the
    existing password is kept). The operator must enroll two-factor
    sign-in (``/account/2fa``) before reaching ``/admin``.

    Raises:
        PasswordRefused: ``password`` fails the password policy.
    """
    email = email.strip().lower()
    if password:
        problem = password_problem(password, [email])
        if problem:
            raise PasswordRefused(problem)
    generated = None
    user = await db.user_by_email(email)
    if user is not None:
        await db.set_role(user.id, "operator")
        if password:
            await db.set_password(user.id, await hash_password(password))
        user.role = "operator"
        return user, None
    if not password:
        password = generated = secrets.token_urlsafe(12)
    account: Account | None = await store.get_account_by_email(email)
    if account is None:
        account = await store.create_account(email, catalog.default_plan, name="Operator")
    user = await db.create_user(account.id, email, await hash_password(password), "operator")
    return user, generated


async def ensure_demo_user(state: WebState, data_dir: Path) -> str | None:
    """If the demo account has no user: create ``demo@voxgate.local`` with a
    random password, written to ``<data_dir>/demo_password`` (mode 0600) and
    printed once. ``state.db`` must be set (the store open). Returns the password, or None when nothing was done."""
    assert state.db is not None
    account_id = await state.store.get_meta("demo_account_id")
    account = await state.store.get_account(account_id) if account_id else None
    if account is None:
        account = await state.store.get_account_by_email(DEMO_EMAIL)
    if account is None or await state.db.users_of(account.id):
        return None
    if await state.db.user_by_email(account.email) is not None:
        return None
    password = secrets.token_urlsafe(12)
    await state.db.create_user(account.id, account.email, await hash_password(password))
    path = data_dir / DEMO_PASSWORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    print(f"demo dashboard login: {account.email} / {password}", flush=True)
    return password
