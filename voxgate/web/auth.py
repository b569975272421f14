"""Dashboard sign-in: argon2 password hashes, server-side cookie sessions,
CSRF tokens and the guards of the pages.

- The session cookie (``vg_session``) holds a random token; the server keeps
  its HMAC in ``web_sessions`` with the user and the session's CSRF token.
  It is HttpOnly, SameSite=Lax, Path=/ and Secure when
  ``settings.web.secure_cookies``.
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

from voxgate.models import Account, PlanCatalog
from voxgate.proxy.api import ACCOUNT_KEY
from voxgate.web.db import SESSION_TTL_S, User, WebDB

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
]

SESSION_COOKIE = "vg_session"
CSRF_COOKIE = "vg_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
MIN_PASSWORD_LEN = 8
USER = web.RequestKey("voxgate.web.user", object)
CSRF = web.RequestKey("voxgate.web.csrf", str)
_TOKEN = web.RequestKey("voxgate.web.token", str)
_NEW_CSRF_COOKIE = web.RequestKey("voxgate.web.new_csrf", str)
_SAFE = ("GET", "HEAD", "OPTIONS")

_hasher = PasswordHasher()

Handler = Callable[..., Awaitable[web.StreamResponse]]


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


def load_secret(configured: str | None, data_dir: Path) -> bytes:
    """The cookie-hashing secret: the configured one, else
    ``<data_dir>/session_secret`` (created, mode 0600, on first use)."""
    if configured:
        return configured.encode()
    path = Path(data_dir) / "session_secret"
    if path.is_file():
        return path.read_text().strip().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret.encode()


def _web(request: web.Request) -> Any:
    from voxgate.web.app import WEB

    return request.app[WEB]


@web.middleware
async def web_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = _web(request)
    request[USER] = None
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        found = await state.db.session_user(token)
        if found is not None:
            user, csrf = found
            account = await state.store.get_account(user.account_id)
            if account is not None:
                request[USER] = user
                request[CSRF] = csrf
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


def safe_next(value: str | None, default: str = "/dashboard") -> str:
    """A local path to go to after sign-in (never another host)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return default


def form_post(fn: Handler) -> Handler:
    """A POST form handler: the CSRF token is checked (403 without the
    right one) and the parsed form is passed as second argument."""

    @functools.wraps(fn)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        form = await request.post()
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
    """Operator pages: signed-out → ``/signin``, other users → 403."""

    @functools.wraps(fn)
    async def wrapper(request: web.Request, *args: Any) -> web.StreamResponse:
        user: User | None = request.get(USER)
        if user is None:
            raise _signin_redirect(request)
        if not user.is_operator:
            raise web.HTTPForbidden(text="operators only")
        return await fn(request, *args)

    wrapper.web_form = getattr(fn, "web_form", False)  # type: ignore[attr-defined]
    return wrapper


def set_session_cookie(response: web.StreamResponse, token: str, secure: bool) -> None:
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Lax", path="/",
                        secure=secure, max_age=int(SESSION_TTL_S))


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/")


def session_token(request: web.Request) -> str | None:
    return request.get(_TOKEN)


async def create_operator(store: Any, db: WebDB, catalog: PlanCatalog, email: str,
                          password: str | None) -> tuple[User, str | None]:
    """Make ``email`` an operator: promote its user, or create the user (on
    the account with that email, else on a new account on the default plan).

    Returns (user, generated password or None when one was given or the
    existing password is kept).
    """
    email = email.strip().lower()
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
