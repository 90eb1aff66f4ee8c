"""Typed helpers that read settings from environment variables.

Every setting that matters is an environment variable with a default (see the README's configuration table).
A secret may also be read from a file named by ``NAME_FILE`` (Docker/Kubernetes secrets).
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured


def envstr(name: str, default: str | None = None) -> str:
    """Return the variable ``name`` (or the content of the file named by ``NAME_FILE``)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    value = os.environ.get(name)
    if value is None or value == "":
        if default is None:
            raise ImproperlyConfigured(f"The environment variable {name} is required.")
        return default
    return value


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """Return a variable that must be one of ``choices``."""
    value = envstr(name, default).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, not {value!r}.")
    return value


def envbool(name: str, default: bool) -> bool:
    """Return a boolean variable: 1/true/yes/on or 0/false/no/off."""
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), not {raw!r}.")


def envint(name: str, default: int, *, minimum: int | None = None) -> int:
    """Return an integer variable, optionally with a lower bound."""
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}.") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}.")
    return value


def envfloat(name: str, default: float) -> float:
    """Return a float variable (seconds, ratios)."""
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}.") from exc


def envlist(name: str, default: str = "") -> list[str]:
    """Return a comma-separated list, blanks removed."""
    return [item.strip() for item in envstr(name, default).split(",") if item.strip()]
