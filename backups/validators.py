"""Allowlists for what a backup storage is configured with, and the SSRF policy for S3 endpoints.

Like ``panel.validators``: values are refused, never escaped into shape.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError

LOCAL_PATH_RE = re.compile(r"/[A-Za-z0-9._/-]{0,398}")
REGION_RE = re.compile(r"[A-Za-z0-9_-]{0,64}")
# S3's bucket naming rules (3-63 characters, lowercase, digits, dots and dashes, starting and ending alphanumeric).
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# An object key (and a prefix) is made of these characters only; the panel builds keys from ids and slugs.
KEY_RE = re.compile(r"[A-Za-z0-9._/-]{1,900}")
# One '/'-separated segment of a key or prefix: never '.', '..' or a hidden name (temporary files are hidden).
KEY_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")


def _fail(message: str) -> None:
    raise ValidationError(message, code="invalid")


def _parts_safe(value: str) -> bool:
    return all(part not in ("", ".", "..") for part in value.split("/"))


def validate_local_path(value: str) -> None:
    """An absolute directory on the panel host, inside one of ``BACKUP_LOCAL_ROOTS``."""
    if not LOCAL_PATH_RE.fullmatch(value) or not _parts_safe(value.rstrip("/")[1:] or "x"):
        _fail("Enter an absolute directory: letters, digits, '.', '_', '-' and '/', no '..' or '//'.")
    if not path_in_local_roots(value):
        _fail("The directory must be inside one of: " + ", ".join(settings.BACKUP_LOCAL_ROOTS) + ".")


def path_in_local_roots(value: str) -> bool:
    """The directory (symlinks resolved) is one of ``BACKUP_LOCAL_ROOTS`` or inside one."""
    real = os.path.realpath(value)
    for root in settings.BACKUP_LOCAL_ROOTS:
        root_real = os.path.realpath(root)
        if real == root_real or real.startswith(root_real.rstrip("/") + "/"):
            return True
    return False


def validate_region(value: str) -> None:
    """An S3 region name (us-east-1, auto, garage)."""
    if not REGION_RE.fullmatch(value):
        _fail("Enter a region: letters, digits, '-' or '_'.")


def validate_bucket(value: str) -> None:
    """An S3 bucket name."""
    if not BUCKET_RE.fullmatch(value) or ".." in value:
        _fail("Enter a bucket name: 3-63 lowercase letters, digits, '.' or '-', starting and ending alphanumeric.")


def validate_prefix(value: str) -> None:
    """A key prefix: key characters, relative, no '..' (``panel/`` or ``acme/prod``)."""
    if value == "":
        return
    segments = value.rstrip("/").split("/")
    if not KEY_RE.fullmatch(value) or not all(KEY_SEGMENT_RE.fullmatch(segment) for segment in segments):
        _fail(
            "Enter a relative prefix: letters, digits, '.', '_', '-' and '/', no leading '/' or '.', no '..' or '//'."
        )


def validate_endpoint_url(value: str) -> None:
    """An http(s) endpoint without credentials, query or fragment, allowed by the SSRF policy."""
    if value == "":
        return
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:  # an unbalanced '[' (IPv6) or a bad port
        _fail("Enter an http:// or https:// endpoint URL.")
        return
    if parts.scheme not in ("http", "https") or not hostname:
        _fail("Enter an http:// or https:// endpoint URL.")
    if parts.username or parts.password or parts.query or parts.fragment or "@" in parts.netloc:
        _fail("The endpoint URL takes no credentials, query or fragment (the keys have their own fields).")
    check_endpoint_policy(value)


def blocked_address(host: str) -> str | None:
    """The first address ``host`` resolves to that is loopback, private, link-local (cloud metadata), reserved,
    multicast or unspecified; None when all are public. Raises ValidationError when it does not resolve.

    The same classes as ``panel.validators.check_git_url_policy``.
    """
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError, ValueError):
        _fail(f"The host {host} cannot be resolved.")
        return None
    for address in sorted(addresses):
        ip = ipaddress.ip_address(str(address).split("%", 1)[0])
        if (
            ip.is_loopback
            or ip.is_private
            or ip.is_link_local
            or ip.is_reserved
            or ip.is_multicast
            or ip.is_unspecified
        ):
            return str(ip)
    return None


def check_endpoint_policy(value: str) -> None:
    """With ``PANEL_BLOCK_PRIVATE_S3_ENDPOINTS``, refuse S3 endpoints that resolve to loopback, private, link-local
    or reserved addresses (SSRF from the panel). Checked when the storage is saved and again before each
    connection (a name may resolve elsewhere later)."""
    if not getattr(settings, "PANEL_BLOCK_PRIVATE_S3_ENDPOINTS", False) or not value:
        return
    try:
        host = urlsplit(value).hostname or ""
    except ValueError:
        _fail("Enter an http:// or https:// endpoint URL.")
        return
    address = blocked_address(host)
    if address is not None:
        _fail(
            f"The endpoint host {host} resolves to {address}, a loopback, private or link-local address; not allowed."
        )
