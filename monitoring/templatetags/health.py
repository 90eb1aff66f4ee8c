"""Template filters of the health pages (``{% load health %}``)."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def uptime_percent(value: float | None) -> str:
    """0..1 as a percentage with the precision uptime needs (99.95 %, not 100 %); an em dash for no data."""
    if value is None:
        return "—"
    percent = 100 * float(value)
    if percent >= 100:
        return "100 %"
    return f"{min(percent, 99.99):.2f} %" if percent >= 99 else f"{percent:.1f} %"


@register.filter
def uptime_of(uptime: dict[str, float | None] | None, window: str) -> float | None:
    """``uptime|uptime_of:"24h"``: one window's value of an uptime dict."""
    return (uptime or {}).get(window)


@register.filter
def iso_minutes(value: str | None) -> str:
    """An ISO 8601 time as ``YYYY-MM-DD HH:MM`` (UTC, as the payloads carry it); an em dash for none."""
    if not value:
        return "—"
    return str(value)[:16].replace("T", " ")
