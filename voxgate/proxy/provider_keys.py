"""Customers' own provider keys (BYOK): a project may store its own OpenAI
API key; its sessions then use it upstream instead of the operator's.

The key is encrypted at rest with ``cryptography``'s Fernet (AES-128-CBC and
HMAC-SHA256, https://cryptography.io/en/latest/fernet/) under the operator's
``upstream.provider_key_secret`` (``VOXGATE_UPSTREAM__PROVIDER_KEY_SECRET``):
one Fernet key, or several separated by commas to rotate (the first
encrypts, any decrypts: ``MultiFernet``). Generate one with
``python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"``.
Without it BYOK is disabled: setting a key is refused with a message saying
so. Only the key's last 4 characters are ever shown again; the plaintext is
never logged, stored or returned.

A project's Twilio auth token (``seal_twilio_token``/``twilio_token_of``,
``docs/telephony.md``) is sealed and opened the same way.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from voxgate.errors import ConfigError, InvalidRequest, PermissionDenied
from voxgate.models import Project

__all__ = ["ProviderKeys", "DISABLED_MESSAGE", "TWILIO_DISABLED_MESSAGE"]

TWILIO_DISABLED_MESSAGE = ("project Twilio auth tokens cannot be stored on this server: the "
                           "operator has not set upstream.provider_key_secret "
                           "(VOXGATE_UPSTREAM__PROVIDER_KEY_SECRET)")
DISABLED_MESSAGE = ("customer provider keys are disabled on this server: the operator has not "
                    "set upstream.provider_key_secret (VOXGATE_UPSTREAM__PROVIDER_KEY_SECRET)")
MIN_KEY_CHARS = 20
MAX_KEY_CHARS = 512


class ProviderKeys:
    """Seals and opens projects' provider keys.

    Args:
        secret: ``upstream.provider_key_secret``: Fernet keys (urlsafe base64,
            32 bytes each), comma separated; None or empty disables BYOK.

    Raises:
        ConfigError: a secret that is not a Fernet key.
    """

    def __init__(self, secret: str | None) -> None:
        keys = [k.strip() for k in (secret or "").split(",") if k.strip()]
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys]) if keys else None
        except (ValueError, TypeError) as exc:
            raise ConfigError("upstream.provider_key_secret must be Fernet keys (urlsafe "
                              "base64 of 32 bytes), comma separated") from exc

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    def seal(self, plaintext: object) -> tuple[str, str]:
        """``(sealed, last4)`` for a customer's key as sent (a string of
        20–512 printable ASCII characters without spaces).

        Raises:
            PermissionDenied (403): BYOK is disabled (no secret configured).
            InvalidRequest (400, param ``openai_api_key``): not such a string.
        """
        return self._seal(plaintext, "openai_api_key", "a provider API key",
                          (MIN_KEY_CHARS, MAX_KEY_CHARS), DISABLED_MESSAGE, "byok_disabled")

    def key_of(self, project: Project) -> str | None:
        """The project's own key in plaintext, or None when it has none.

        Raises:
            PermissionDenied (403): it has one but BYOK is disabled now, or the
                secret that sealed it is no longer configured (the session
                cannot use the customer's key and must not silently fall back
                to the operator's).
        """
        sealed = project.provider_key_sealed
        if sealed is None:
            return None
        if self._fernet is None:
            raise PermissionDenied(f"this project has its own provider key but {DISABLED_MESSAGE}",
                                   code="byok_disabled")
        try:
            return self._open(sealed)
        except InvalidToken as exc:
            raise PermissionDenied(
                "this project's own provider key cannot be decrypted with the server's "
                "upstream.provider_key_secret (rotated without keeping the old key?): "
                "set the key again", code="byok_unreadable") from exc

    # -- a project's Twilio auth token (issue 22), sealed the same way -------

    def seal_twilio_token(self, plaintext: object) -> tuple[str, str]:
        """``(sealed, last4)`` for a project's Twilio auth token as sent (a
        string of 16–128 printable ASCII characters without spaces; Twilio's
        are 32 hexadecimal digits).

        Raises:
            PermissionDenied (403, ``twilio_token_disabled``): no
                ``upstream.provider_key_secret`` to seal it with.
            InvalidRequest (400, param ``twilio_auth_token``): not such a string.
        """
        return self._seal(plaintext, "twilio_auth_token", "the Twilio account's auth token",
                          (16, 128), TWILIO_DISABLED_MESSAGE, "twilio_token_disabled")

    def twilio_token_of(self, project: Project) -> str | None:
        """The project's own Twilio auth token in plaintext, or None when it
        has none.

        Raises:
            PermissionDenied (403, ``twilio_token_unreadable``): it has one but
                it cannot be opened (no secret configured now, or not the one
                that sealed it): its calls cannot be verified and must not be
                taken unverified.
        """
        sealed = project.twilio_token_sealed
        if sealed is None:
            return None
        try:
            return self._open(sealed)
        except InvalidToken as exc:
            raise PermissionDenied(
                "this project's Twilio auth token cannot be decrypted with the server's "
                "upstream.provider_key_secret: set the token again",
                code="twilio_token_unreadable") from exc

    # -- the one way a secret is sealed and opened -----------------------------

    def _seal(self, plaintext: object, param: str, what: str, lengths: tuple[int, int],
              disabled: str, disabled_code: str) -> tuple[str, str]:
        """``(Fernet token, last 4 characters)`` of ``plaintext``: a string of
        ``lengths`` printable ASCII characters without spaces.

        Raises:
            PermissionDenied (403, ``disabled_code``): no secret to seal with.
            InvalidRequest (400, ``param``): not such a string.
        """
        if self._fernet is None:
            raise PermissionDenied(disabled, code=disabled_code)
        low, high = lengths
        if not isinstance(plaintext, str) or not low <= len(plaintext) <= high \
                or not all("!" <= c <= "~" for c in plaintext):
            raise InvalidRequest(f"{param} must be {what}: {low}-{high} printable characters "
                                 "without spaces (or null to remove it)", param=param)
        return self._fernet.encrypt(plaintext.encode()).decode(), plaintext[-4:]

    def _open(self, sealed: str) -> str:
        """The plaintext of a Fernet token.

        Raises:
            InvalidToken: no secret configured, or not one that sealed it.
        """
        if self._fernet is None:
            raise InvalidToken
        return self._fernet.decrypt(sealed.encode()).decode()
