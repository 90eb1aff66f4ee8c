"""Allowlists for every identifier that may reach a remote command.

Values are rejected, never escaped into shape: a name with a shell metacharacter, a leading dash, a newline or an
overlong value is refused with a message a person can act on. Remote commands are still built as argv lists and
joined with ``shlex.join`` (panel/remote), so these checks are a second wall, not the only one.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}")
SLUG_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
UNIX_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
COMPOSE_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\.ya?ml")
GIT_SCP_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}@[A-Za-z0-9.-]{1,253}:[A-Za-z0-9_./~-]{1,400}")
GIT_URL_RE = re.compile(
    r"(ssh|https)://([A-Za-z0-9_.-]{1,64}@)?[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?/[A-Za-z0-9_./~-]{1,400}"
)
GIT_PATH_RE = re.compile(r"/[A-Za-z0-9_./-]{1,400}")
REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
# Stricter than git check-ref-format, which allows shell metacharacters (;, $, `, |, &) in ref names.
REF_ALLOWED = re.compile(r"[A-Za-z0-9._/+-]+")
CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _fail(message: str) -> None:
    raise ValidationError(message, code="invalid")


def validate_name(value: str) -> None:
    """A display name: letters, digits, spaces, dot, dash and underscore; 1-63 characters; no leading dash."""
    if not NAME_RE.fullmatch(value):
        _fail("Use 1-63 letters, digits, spaces, '.', '_' or '-', starting with a letter or digit.")


def validate_slug(value: str) -> None:
    """A machine name (compose project key, database name): lowercase letters, digits, '-' and '_'."""
    if not SLUG_RE.fullmatch(value):
        _fail("Use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit.")


def validate_host(value: str) -> None:
    """A DNS name or an IP address; never an option (leading '-') or anything with spaces or shell characters."""
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    if not HOSTNAME_RE.fullmatch(value):
        _fail("Enter a host name (letters, digits, dots and dashes) or an IP address.")


def validate_unix_user(value: str) -> None:
    """A POSIX user name."""
    if not UNIX_USER_RE.fullmatch(value):
        _fail("Enter a Unix user name: lowercase letters, digits, '_' or '-', at most 32 characters.")


def validate_port(value: int) -> None:
    """A TCP port."""
    if not 1 <= int(value) <= 65535:
        _fail("Enter a port between 1 and 65535.")


def validate_git_url(value: str) -> None:
    """A git remote the server fetches from: ssh://, https://, user@host:path, or an absolute path on the server."""
    if value.startswith("-") or "::" in value or ".." in value.split("/"):
        _fail("This git URL is not allowed.")
    if not (GIT_URL_RE.fullmatch(value) or GIT_SCP_RE.fullmatch(value) or GIT_PATH_RE.fullmatch(value)):
        _fail("Enter an ssh://, https:// or user@host:path git URL, or an absolute path on the server.")
    check_git_url_policy(value)


def git_url_host(value: str) -> str | None:
    """The host part of a git URL (None for a path on the server)."""
    if value.startswith("/"):
        return None
    if "://" in value:
        return urlsplit(value).hostname or ""
    return value.split("@", 1)[1].split(":", 1)[0]


def check_git_url_policy(value: str) -> None:
    """With ``PANEL_BLOCK_PRIVATE_GIT_HOSTS``, refuse git remotes on the server's own disk or on addresses that
    resolve to loopback, private, link-local (cloud metadata) or reserved networks (SSRF from the servers)."""
    from django.conf import settings

    if not getattr(settings, "PANEL_BLOCK_PRIVATE_GIT_HOSTS", False):
        return
    host = git_url_host(value)
    if host is None:
        _fail("Git repositories on the server's own disk are not allowed here.")
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        _fail(f"The git host {host} cannot be resolved.")
        return
    for address in addresses:
        ip = ipaddress.ip_address(str(address).split("%", 1)[0])
        if (
            ip.is_loopback
            or ip.is_private
            or ip.is_link_local
            or ip.is_reserved
            or ip.is_multicast
            or ip.is_unspecified
        ):
            _fail(f"The git host {host} resolves to {ip}, a loopback, private or link-local address; not allowed here.")


def validate_git_ref(value: str) -> None:
    """A branch, tag or commit, following ``git check-ref-format`` rules, never starting with '-'."""
    if (
        not value
        or len(value) > 200
        or value.startswith(("-", "/", "."))
        or value.endswith(("/", ".", ".lock"))
        or ".." in value
        or "//" in value
        or "@{" in value
        or value == "@"
        or "/." in value
        or REF_FORBIDDEN.search(value)
        or not REF_ALLOWED.fullmatch(value)
    ):
        _fail(
            "Enter a valid git branch, tag or commit: letters, digits, '.', '_', '/', '+' or '-', not starting with '-'."
        )


def validate_domain(value: str) -> None:
    """A public domain name for an environment."""
    if not HOSTNAME_RE.fullmatch(value) or "." not in value:
        _fail("Enter a domain name such as erp.example.com.")


def validate_env_name(value: str) -> None:
    """An environment variable name."""
    if not ENV_NAME_RE.fullmatch(value):
        _fail(f"{value[:40]!r} is not a valid environment variable name.")


def validate_env_value(value: str) -> None:
    """An environment variable value: any printable text on one line, at most 4096 characters."""
    if len(value) > 4096 or CONTROL_RE.search(value):
        _fail("Values must be one line of at most 4096 characters, without control characters.")


def validate_env_mapping(value: object) -> None:
    """A mapping of environment variable names to one-line string values."""
    if not isinstance(value, dict):
        _fail("Enter a mapping of NAME to value.")
        return
    for key, item in value.items():
        validate_env_name(str(key))
        if not isinstance(item, str):
            _fail(f"The value of {key} must be text.")
        validate_env_value(item)


def validate_compose_file(value: str) -> None:
    """A compose file name inside the project (no directories)."""
    if not COMPOSE_FILE_RE.fullmatch(value):
        _fail("Enter a compose file name such as prod.yaml (no directories).")


def validate_compose_files(value: object) -> None:
    """A non-empty list of compose file names."""
    if not isinstance(value, list) or not value or len(value) > 10:
        _fail("Enter between one and ten compose files.")
        return
    for item in value:
        validate_compose_file(str(item))


KNOWN_HOSTS_LINE_RE = re.compile(
    r"(@cert-authority |@revoked )?[A-Za-z0-9.,:\[\]*?!-]{1,500} "
    r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) "
    r"[A-Za-z0-9+/=]{20,2000}( [^\x00-\x1f]{0,200})?"
)


def validate_known_hosts(value: str) -> None:
    """known_hosts lines (``host key-type base64 [comment]``), e.g. from ``ssh-keyscan``; '#' comments allowed."""
    for number, line in enumerate(value.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not KNOWN_HOSTS_LINE_RE.fullmatch(line):
            _fail(f"Line {number} is not a known_hosts line (host key-type base64-key).")
