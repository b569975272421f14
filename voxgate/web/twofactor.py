"""Two-factor sign-in: TOTP (RFC 6238, through ``pyotp``) and one-time
recovery codes. Pure: the caller passes ``now`` (Unix seconds) and stores
what these functions return.

- Codes are 6 digits, 30-second steps, SHA-1 (what every authenticator app
  reads from an ``otpauth://`` URI); one step of clock drift either way is
  accepted, and a step is accepted once (``verify_totp`` returns the step
  and refuses steps up to the last accepted one).
- Recovery codes are ``xxxxx-xxxxx`` (10 hex digits, 40 bits each, random),
  ``RECOVERY_CODES`` of them, shown once and stored hashed by the caller.
"""

from __future__ import annotations

import hmac
import re
import secrets

import pyotp
import qrcode  # type: ignore[import-untyped]
import qrcode.image.svg  # type: ignore[import-untyped]

__all__ = [
    "ISSUER",
    "RECOVERY_CODES",
    "new_secret",
    "provisioning_uri",
    "verify_totp",
    "new_recovery_codes",
    "normalise_code",
    "is_totp_code",
    "recovery_code_shape",
    "qr_svg",
]

ISSUER = "voxgate"
RECOVERY_CODES = 10
DRIFT_STEPS = 1
_TOTP_CODE = re.compile(r"^[0-9]{6}$")
_RECOVERY = re.compile(r"^[0-9a-f]{10}$")


def new_secret() -> str:
    """A random base32 TOTP secret (160 bits, RFC 4226 §4 R6)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, email: str) -> str:
    """The ``otpauth://totp/voxgate:EMAIL?secret=…&issuer=voxgate`` URI that
    authenticator apps import (Key URI Format)."""
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    """The QR code of ``uri`` as an inline ``<svg>`` element (one path, no
    script, no text: safe to embed unescaped)."""
    image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=10, border=2)
    svg: str = image.to_string(encoding="unicode")
    return svg.replace("<svg ", '<svg class="qr" role="img" aria-label="QR code of the otpauth URI" ',
                       1)


def normalise_code(code: str) -> str:
    """A code as typed, without spaces and dashes, lower case."""
    return re.sub(r"[\s-]", "", code).lower()


def is_totp_code(code: str) -> bool:
    return bool(_TOTP_CODE.match(normalise_code(code)))


def verify_totp(secret: str, code: str, now: float, last_step: int = 0) -> int | None:
    """The time step (``now // 30``, ± ``DRIFT_STEPS``) whose code is
    ``code``, or None when it matches none or only steps ≤ ``last_step``
    (already used). Compared in constant time."""
    code = normalise_code(code)
    if not _TOTP_CODE.match(code):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now) // totp.interval
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if step > last_step and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def new_recovery_codes(count: int = RECOVERY_CODES) -> list[str]:
    """``count`` random codes ``xxxxx-xxxxx``."""
    out = []
    for _ in range(count):
        raw = secrets.token_hex(5)
        out.append(f"{raw[:5]}-{raw[5:]}")
    return out


def recovery_code_shape(code: str) -> str | None:
    """The canonical form (10 hex digits) of a typed recovery code, or None."""
    code = normalise_code(code)
    return code if _RECOVERY.match(code) else None
