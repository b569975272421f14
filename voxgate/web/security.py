"""Pure pieces of the dashboard's defences (no I/O, no clock reads):

- ``safe_next``: the ``next`` of a sign-in, accepted only as a same-site path
  as a browser's URL parser sees it (WHATWG URL: tab and newline are removed
  anywhere, ``\\`` is a path separator), so ``/<TAB>/evil.example`` is not
  ``//evil.example``.
- ``SlidingWindow``: a per-key sliding-window counter of bounded memory, for
  rate limits and failed sign-in throttles; the caller passes ``now``.
- ``password_problem``: the password policy (length, zxcvbn strength).
- ``csv_cell``: CSV formula-injection neutralisation (OWASP "CSV Injection").
- ``SECURITY_HEADERS``: the headers of every dashboard response
  (Content-Security-Policy, X-Frame-Options, nosniff, Referrer-Policy).
- ``is_loopback``: whether a listen address is the local host only.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

from zxcvbn import zxcvbn  # type: ignore[import-untyped]

from voxgate.metering.rate import SlidingWindow
from voxgate.models.origins import is_loopback

__all__ = [
    "safe_next",
    "SlidingWindow",
    "retry_after_header",
    "password_problem",
    "MIN_PASSWORD_LEN",
    "MAX_PASSWORD_LEN",
    "MIN_PASSWORD_SCORE",
    "csv_cell",
    "CONTENT_SECURITY_POLICY",
    "SECURITY_HEADERS",
    "is_loopback",
    "DashboardLimits",
]

MIN_PASSWORD_LEN = 12
MAX_PASSWORD_LEN = 256  # argon2 cost does not depend on it, but forms need a bound
MIN_PASSWORD_SCORE = 3  # zxcvbn: 0 (guessable) … 4 (very unguessable); 3 ≈ 10^8 guesses
_ZXCVBN_MAX_LEN = 72  # zxcvbn refuses longer input; strength is judged on this prefix

# Same origin only; no inline or eval'd script; no <style> elements or
# foreign styles (style *attributes* are allowed: the quota bar's width
# and the free-tier badge's preview). No framing (clickjacking), no
# <base> rewriting, no plugins.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "style-src-attr 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
    "media-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def safe_next(value: str | None, default: str = "/dashboard") -> str:
    """A same-site path to go to after sign-in, else ``default``.

    Refused (``default`` returned): control characters (C0, DEL: browsers
    drop tab/CR/LF, so ``/\\t/evil.example`` would become
    ``//evil.example``), backslashes (``/\\evil.example`` is
    ``//evil.example`` to a browser), anything with a scheme or a network
    location once parsed (``//host``, ``https:…``, ``javascript:…``), and
    anything not starting with exactly one ``/``.
    """
    if not value or len(value) > 2048:
        return default
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or "\\" in value:
        return default
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unbalanced "[" in the netloc
        return default
    if parts.scheme or parts.netloc:
        return default
    if not value.startswith("/") or value.startswith("//"):
        return default
    return value


def retry_after_header(wait_s: float) -> str:
    """The ``Retry-After`` value (RFC 9110 §10.2.3: whole seconds, ≥ 1)."""
    return str(max(1, math.ceil(wait_s)))


def password_problem(password: str, user_inputs: list[str] | tuple[str, ...] = ()) -> str | None:
    """Why ``password`` is refused, or None when it is acceptable.

    At least ``MIN_PASSWORD_LEN`` and at most ``MAX_PASSWORD_LEN`` characters
    and a zxcvbn score of at least ``MIN_PASSWORD_SCORE`` (``user_inputs``,
    e.g. the email and name, count as known words).
    """
    if len(password) < MIN_PASSWORD_LEN:
        return f"The password needs at least {MIN_PASSWORD_LEN} characters."
    if len(password) > MAX_PASSWORD_LEN:
        return f"The password may have at most {MAX_PASSWORD_LEN} characters."
    inputs = [i for i in user_inputs if i] + [part for i in user_inputs if i and "@" in i
                                              for part in i.split("@")]
    result: dict[str, Any] = zxcvbn(password[:_ZXCVBN_MAX_LEN], user_inputs=inputs + ["voxgate"])
    if int(result["score"]) >= MIN_PASSWORD_SCORE:
        return None
    feedback = result.get("feedback") or {}
    hints = [str(feedback.get("warning") or "")] + [str(s) for s in feedback.get("suggestions") or []]
    detail = " ".join(h for h in hints if h)
    return "This password is too easy to guess." + (f" {detail}" if detail else
                                                     " Add another word or two.")


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell that spreadsheets will not run as a formula: text starting
    with ``= + - @``, tab or CR gets a leading ``'``. Numbers, None and
    other text pass unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class DashboardLimits:
    """The rate limits and sign-in throttles of one dashboard process.

    Per client IP (``request.remote``: behind a reverse proxy, every client
    shares the proxy's address, so these then act as one global limit):
    ``signin_ip`` (sign-in and code forms), ``signup_ip``, ``demo_key_ip``
    (requests per window) and ``failed_ip`` (failed sign-ins). Per account
    (the email as typed, lower case, registered or not, so that the answer
    does not tell which): ``failed_account`` (failed passwords and codes).
    A full window answers 429 with ``Retry-After``.
    """

    SIGNIN_PER_MIN = 30
    SIGNUP_PER_10_MIN = 10
    DEMO_KEYS_PER_MIN = 10
    FAILED_PER_IP_15_MIN = 20
    FAILED_PER_ACCOUNT_15_MIN = 5

    def __init__(self, max_keys: int = 10_000) -> None:
        self.signin_ip = SlidingWindow(self.SIGNIN_PER_MIN, 60.0, max_keys)
        self.signup_ip = SlidingWindow(self.SIGNUP_PER_10_MIN, 600.0, max_keys)
        self.demo_key_ip = SlidingWindow(self.DEMO_KEYS_PER_MIN, 60.0, max_keys)
        self.failed_ip = SlidingWindow(self.FAILED_PER_IP_15_MIN, 900.0, max_keys)
        self.failed_account = SlidingWindow(self.FAILED_PER_ACCOUNT_15_MIN, 900.0, max_keys)
