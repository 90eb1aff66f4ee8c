"""Secrets at rest: Fernet with rotatable keys (PANEL_ENCRYPTION_KEYS, the first one encrypts).

``EncryptedTextField`` stores ciphertext in the database and hands plain text to Python code; the plain text is
never rendered, serialised or logged by the panel (forms and serializers treat these fields as write-only).
"""

from __future__ import annotations

import functools
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models


@functools.cache
def _fernet() -> MultiFernet:
    keys = settings.PANEL_ENCRYPTION_KEYS
    if not keys:
        raise ImproperlyConfigured("PANEL_ENCRYPTION_KEYS must hold at least one Fernet key.")
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured("PANEL_ENCRYPTION_KEYS holds a value that is not a Fernet key.") from exc


def reset_key_cache() -> None:
    """Forget the loaded keys (after settings changed, e.g. in key rotation)."""
    _fernet.cache_clear()


def generate_key() -> str:
    """A new random Fernet key, for PANEL_ENCRYPTION_KEYS."""
    return Fernet.generate_key().decode()


def encrypt(plain: str) -> str:
    """Encrypt with the primary key."""
    return _fernet().encrypt(plain.encode()).decode()


def decrypt(token: str) -> str:
    """Decrypt with any configured key."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "A stored secret cannot be decrypted with PANEL_ENCRYPTION_KEYS (was a key removed too early?)."
        ) from exc


def rotate(token: str) -> str:
    """Re-encrypt a token with the primary key."""
    return _fernet().rotate(token.encode()).decode()


class EncryptedTextField(models.TextField):  # type: ignore[type-arg]
    """A text column encrypted at rest. Empty strings stay empty (nothing to hide)."""

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        if value is None or value == "":
            return value
        return decrypt(value)

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(str(value))
