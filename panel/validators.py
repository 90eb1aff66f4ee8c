"""Allowlists for every identifier that may reach a remote command.

Values are rejected, never escaped into shape: a name with a shell metacharacter, a leading dash, a newline or an
overlong value is refused with a message a person can act on. Remote commands are still built as argv lists and
joined with ``shlex.join`` (panel/remote), so these checks are a second wall, not the only one.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
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
SURROGATE_RE = re.compile("[\ud800-\udfff]")
UNPRINTABLE_RE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
ID_RE = re.compile(r"[0-9]{1,19}")
MAX_ID = 2**63 - 1  # PostgreSQL bigint, the type of every primary key (DEFAULT_AUTO_FIELD)
ENV_VALUE_MAX_LENGTH = 4096


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


POSTGRES_VERSION_RE = re.compile(r"[0-9]{1,2}(\.[0-9])?")


def validate_postgres_version(value: str) -> None:
    """A PostgreSQL major version as doodba-copier-template asks for it (``15``, ``9.6``)."""
    if not POSTGRES_VERSION_RE.fullmatch(value):
        _fail("Use a PostgreSQL major version such as 15 (or 9.6).")


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


# An environment's domains end up inside Traefik rules (``Host(`...`)``): only this shape gets there. RFC 1123
# labels, lowercase ASCII (IDNs arrive here as punycode, ``normalize_domain``), at least two labels, a top-level
# label that is not all digits (so no IP address), 253 characters at most. No wildcard: HTTP-01, the challenge the
# proxy uses, cannot issue one.
DOMAIN_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
MAX_ALIASES = 20
MAX_ALLOWED_NETWORKS = 50


def normalize_domain(value: object) -> str:
    """A domain as the user typed it, in the form the panel stores: trimmed, lowercase, one trailing dot dropped,
    an internationalized name converted to punycode (``bücher.example`` → ``xn--bcher-kva.example``).

    Refuses (ValidationError) what cannot be converted; the result still goes through ``validate_domain``.
    """
    if not isinstance(value, str):
        _fail("Enter a domain name such as erp.example.com.")
        return ""
    text = value.strip().lower()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    if text.isascii():
        return text
    if len(text) > 253 or any(char.isspace() or char in "`()|&!,;'\"\\/" for char in text):
        _fail("Enter a domain name such as erp.example.com: letters, digits, dots and dashes only.")
    try:
        ascii_form = text.encode("idna").decode("ascii")
        back = ascii_form.encode("ascii").decode("idna")
    except UnicodeError:
        _fail("This internationalized domain name cannot be converted to its ASCII (punycode) form.")
        return ""
    if back != unicodedata.normalize("NFC", text):
        # The conversion dropped or mapped characters (invisible ones, 'ß'): what is served must be what was typed.
        _fail(f"This domain name has characters that do not survive conversion to punycode (it would become {back}).")
    return ascii_form


def validate_domain(value: str) -> None:
    """A public domain name for an environment (main domain or alias): lowercase ASCII hostname, RFC 1123."""
    if not isinstance(value, str) or not value:
        _fail("Enter a domain name such as erp.example.com.")
    if value.startswith("*."):
        _fail("Wildcard domains are not supported: the proxy's certificates (ACME HTTP-01) cannot cover them.")
    if len(value) > 253:
        _fail("A domain name can have at most 253 characters.")
    if not value.isascii() or value != value.lower():
        _fail("Enter the domain name in lowercase ASCII (internationalized names in their xn-- punycode form).")
    labels = value.split(".")
    if len(labels) < 2:
        _fail("Enter a full domain name such as erp.example.com.")
    for label in labels:
        if not DOMAIN_LABEL_RE.fullmatch(label):
            _fail(
                f"{label[:63]!r} is not a valid part of a domain name: 1-63 letters, digits or dashes, "
                "not starting or ending with a dash."
            )
    if labels[-1].isdigit():
        _fail("Enter a domain name, not an IP address.")


def validate_domain_list(value: object) -> None:
    """An environment's aliases: a list of at most ``MAX_ALIASES`` distinct domain names."""
    if not isinstance(value, list):
        _fail("Enter a list of domain names.")
        return
    if len(value) > MAX_ALIASES:
        _fail(f"Enter at most {MAX_ALIASES} aliases.")
    for item in value:
        if not isinstance(item, str):
            _fail("Each alias must be a domain name.")
        try:
            validate_domain(item)
        except ValidationError as exc:
            _fail(f"{printable(item[:80])!r}: {' '.join(exc.messages)}")
    if len(set(value)) != len(value):
        _fail("An alias is listed twice.")


def normalize_network(value: object) -> str:
    """A CIDR (or a single address) as stored: ``ipaddress``'s canonical form, host bits refused."""
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        _fail("Enter a network such as 203.0.113.0/24 or 2001:db8::/32, or a single address.")
        return ""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=True))
    except ValueError:
        _fail(
            f"{printable(value[:64])!r} is not a network such as 203.0.113.0/24 or 2001:db8::/32 "
            "(with no bits set after the prefix), or a single address."
        )
        return ""


def validate_network_list(value: object) -> None:
    """An IP allow-list: at most ``MAX_ALLOWED_NETWORKS`` networks, each already in canonical form."""
    if not isinstance(value, list):
        _fail("Enter a list of networks.")
        return
    if len(value) > MAX_ALLOWED_NETWORKS:
        _fail(f"Enter at most {MAX_ALLOWED_NETWORKS} networks.")
    for item in value:
        if normalize_network(item) != item:
            _fail(f"{printable(str(item)[:64])!r} is not in canonical form; write it as {normalize_network(item)}.")


def validate_env_name(value: str) -> None:
    """An environment variable name."""
    if not ENV_NAME_RE.fullmatch(value):
        _fail(f"{value[:40]!r} is not a valid environment variable name.")


def validate_env_value(value: str) -> None:
    """An env var or secret value that reaches the container byte for byte: one line of text, tab allowed.

    Refused: a line break (Doodba writes these variables into ``odoo.conf``, whose lines a newline would split,
    adding configuration; the form takes one variable per line), NUL (a process environment cannot hold it), the
    other control characters, and lone surrogates (not text: they have no UTF-8 form). Everything else, quotes,
    backslashes, ``$``, ``#``, spaces at either end and any Unicode, is written so that compose hands it over
    unchanged (``deployments.pipeline``).
    """
    if len(value) > ENV_VALUE_MAX_LENGTH:
        _fail(f"A value can have at most {ENV_VALUE_MAX_LENGTH} characters.")
    if "\n" in value or "\r" in value:
        _fail("A value must be one line: a line break would split it in odoo.conf, which Doodba writes from it.")
    if "\x00" in value:
        _fail("A value cannot contain a NUL character: a process environment cannot hold one.")
    control = CONTROL_RE.search(value)
    if control:
        _fail(f"A value cannot contain the control character U+{ord(control.group()):04X} (tab is allowed).")
    if SURROGATE_RE.search(value):
        _fail("A value must be valid Unicode text: it contains a lone surrogate, which has no UTF-8 form.")


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


def parse_id(value: object) -> int | None:
    """A database id given as text (query string, form field): 1 to 2**63-1 in ASCII digits, else None.

    ``str.isdigit`` is not a test for this: it accepts '²', which ``int`` refuses, while ``int`` accepts ' 7',
    '+7', '1_000' and other scripts' digits; and a number past bigint makes PostgreSQL raise.
    """
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        return None
    number = int(value)
    return number if 1 <= number <= MAX_ID else None


def unstorable_text(value: str) -> str | None:
    """Why PostgreSQL cannot store this text (a NUL character, a lone surrogate), or None when it can."""
    if "\x00" in value:
        return "a NUL character"
    if SURROGATE_RE.search(value):
        return "a lone surrogate (not valid Unicode)"
    return None


def printable(value: str) -> str:
    """Text safe to record and show: control characters and lone surrogates as ``\\xNN``/``\\uNNNN`` escapes."""
    return UNPRINTABLE_RE.sub(
        lambda match: f"\\x{ord(match.group()):02x}" if ord(match.group()) < 0x100 else f"\\u{ord(match.group()):04x}",
        value,
    )
