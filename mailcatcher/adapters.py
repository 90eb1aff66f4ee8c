"""Adapters from the HTTP APIs of MailHog (v2 list and search, v1 message and delete) and Mailpit (v1) to one
shape the pages and the API show: ``MailPage`` of ``MailSummary`` rows, one ``Mail`` with its text, HTML, headers
and attachments.

An adapter only turns requests into answers: it gets a ``send(method, path, query)`` that returns an
``HTTPAnswer`` (``mailcatcher.services`` passes one that goes through the server's SSH connection; the tests pass
recorded answers). Message ids come from the catcher and are checked against ``MESSAGE_ID`` before they are put
into a path; part ids against ``PART_ID``.
"""

from __future__ import annotations

import datetime
import email
import email.header
import email.policy
import email.utils
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, ClassVar
from urllib.parse import quote

from panel.remote.tunnel import HTTPAnswer, TunnelError

Send = Callable[[str, str, dict[str, str] | None], HTTPAnswer]

MESSAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=@+-]{0,199}$")
PART_ID = re.compile(r"^[0-9]{1,4}(\.[0-9]{1,4}){0,8}$")
SEARCH_KINDS = ("any", "from", "to")
MAX_QUERY = 200


class CatcherError(TunnelError):
    """The catcher answered, but not as its API says (wrong status, unexpected shape)."""


class MailNotFound(CatcherError):
    """No message (or part) with that id in the catcher."""


@dataclass(frozen=True)
class MailSummary:
    """One row of the list."""

    id: str
    sender: str
    recipients: list[str]
    subject: str
    date: datetime.datetime | None
    size: int


@dataclass(frozen=True)
class MailPage:
    """One page of the list (or of a search): ``total`` matches, ``items`` from ``start``."""

    total: int
    start: int
    items: list[MailSummary]


@dataclass(frozen=True)
class Attachment:
    """An attachment (or inline part) of a mail; ``part`` is the catcher's id of it (opaque to the browser)."""

    part: str
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class Mail:
    """One message: its summary fields, its headers in order, the text and HTML bodies and its attachments."""

    id: str
    sender: str
    recipients: list[str]
    subject: str
    date: datetime.datetime | None
    size: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str = ""
    html: str = ""
    attachments: list[Attachment] = field(default_factory=list)


@dataclass(frozen=True)
class Part:
    """The bytes of one attachment."""

    filename: str
    content_type: str
    data: bytes


def check_message_id(message_id: str) -> str:
    """``message_id`` if it looks like a catcher's id, else ``MailNotFound`` (it never reaches a path)."""
    if not isinstance(message_id, str) or not MESSAGE_ID.match(message_id):
        raise MailNotFound("No such mail.")
    return message_id


def decode_header(value: str) -> str:
    """An RFC 2047 header value as text (undecodable words are kept as they are)."""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        return value


def parse_date(value: Any) -> datetime.datetime | None:
    """An ISO 8601 (API) or RFC 2822 (header) date, aware; None when missing or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed


def _text(value: Any, limit: int = 2000) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _expect(answer: HTTPAnswer, what: str) -> Any:
    if answer.status == 404:
        raise MailNotFound("No such mail.")
    if answer.status != 200:
        raise CatcherError(f"The mail catcher answered HTTP {answer.status} to {what}.")
    try:
        return answer.json()
    except TunnelError as exc:
        raise CatcherError(f"The mail catcher's answer to {what} is not JSON.") from exc


def _json_or_none(answer: HTTPAnswer) -> Any:
    try:
        return answer.json() if answer.status == 200 else None
    except TunnelError:
        return None


class Adapter:
    """What every catcher API offers; subclasses speak one API."""

    kind: ClassVar[str] = ""
    label: ClassVar[str] = ""

    def __init__(self, send: Send) -> None:
        self.send = send

    def list(self, *, start: int, limit: int, query: str = "", search_kind: str = "any") -> MailPage:
        """Newest first; with ``query``, only the mails that match it (``search_kind``: any field, from, to)."""
        raise NotImplementedError

    def get(self, message_id: str) -> Mail:
        """One message (``MailNotFound`` when the catcher has no such id)."""
        raise NotImplementedError

    def part(self, message_id: str, part: str) -> Part:
        """The bytes of one attachment of a message."""
        raise NotImplementedError

    def delete_all(self) -> None:
        """Delete every caught mail."""
        raise NotImplementedError


# -- MailHog -----------------------------------------------------------------------------------------


def _mailhog_path(value: Any) -> str:
    if not isinstance(value, dict):
        return ""
    mailbox, domain = _text(value.get("Mailbox"), 300), _text(value.get("Domain"), 300)
    return f"{mailbox}@{domain}" if domain else mailbox


def _first_header(headers: Any, name: str) -> str:
    if not isinstance(headers, dict):
        return ""
    for key, values in headers.items():
        if isinstance(key, str) and key.lower() == name.lower() and isinstance(values, list) and values:
            return decode_header(_text(values[0]))
    return ""


def _payload(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _bodies(message: Message) -> tuple[str, str, list[tuple[Attachment, Message]]]:
    """The first text/plain and text/html bodies of a parsed mail, and its attachments (with their parts)."""
    text = html = ""
    attachments: list[tuple[Attachment, Message]] = []
    for index, part in enumerate(message.walk()):
        if part.is_multipart():
            continue
        content_type = part.get_content_type()
        disposition = (part.get_content_disposition() or "").lower()
        filename = part.get_filename()
        if disposition == "attachment" or filename or not content_type.startswith("text/"):
            payload = _payload(part)
            name = decode_header(filename) if filename else f"part-{index}"
            attachments.append((Attachment(str(index), name[:300], content_type, len(payload)), part))
            continue
        payload = _payload(part)
        charset = part.get_content_charset() or "utf-8"
        try:
            decoded = payload.decode(charset, errors="replace")
        except LookupError:
            decoded = payload.decode("utf-8", errors="replace")
        if content_type == "text/html" and not html:
            html = decoded
        elif content_type == "text/plain" and not text:
            text = decoded
    return text, html, attachments


class MailHog(Adapter):
    """MailHog: ``/api/v2/messages`` and ``/api/v2/search`` for the list, ``/api/v1/messages/{id}`` for one
    message (its raw data is parsed here), ``DELETE /api/v1/messages``."""

    kind = "mailhog"
    label = "MailHog"

    def _summary(self, item: Any) -> MailSummary:
        if not isinstance(item, dict) or not isinstance(item.get("ID"), str):
            raise CatcherError("MailHog listed a message without an ID.")
        content: dict[str, Any] = item["Content"] if isinstance(item.get("Content"), dict) else {}
        headers = content.get("Headers")
        to: list[Any] = item["To"] if isinstance(item.get("To"), list) else []
        raw: dict[str, Any] = item["Raw"] if isinstance(item.get("Raw"), dict) else {}
        return MailSummary(
            id=item["ID"],
            sender=_first_header(headers, "From") or _mailhog_path(item.get("From")),
            recipients=[_mailhog_path(path) for path in to][:100],
            subject=_first_header(headers, "Subject"),
            date=parse_date(item.get("Created")),
            size=_int(content.get("Size")) if content else len(_text(raw.get("Data"), 10**9)),
        )

    def list(self, *, start: int, limit: int, query: str = "", search_kind: str = "any") -> MailPage:
        page = {"start": str(start), "limit": str(limit)}
        if query:
            kind = {"any": "containing", "from": "from", "to": "to"}.get(search_kind, "containing")
            data = _expect(self.send("GET", "/api/v2/search", {"kind": kind, "query": query, **page}), "a search")
        else:
            data = _expect(self.send("GET", "/api/v2/messages", page), "the list")
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise CatcherError("MailHog's list has no items.")
        items = [self._summary(item) for item in data["items"]]
        return MailPage(total=_int(data.get("total")), start=_int(data.get("start")), items=items)

    def _raw(self, message_id: str) -> tuple[dict[str, Any], Message]:
        path = f"/api/v1/messages/{quote(check_message_id(message_id), safe='@=+')}"
        data = _expect(self.send("GET", path, None), "a message")
        if not isinstance(data, dict) or not isinstance(data.get("Raw"), dict):
            raise CatcherError("MailHog's message has no raw data.")
        raw_data = _text(data["Raw"].get("Data"), 10**9)
        return data, email.message_from_string(raw_data, policy=email.policy.compat32)

    def get(self, message_id: str) -> Mail:
        data, parsed = self._raw(message_id)
        summary = self._summary(data)
        text, html, attachments = _bodies(parsed)
        content = data.get("Content") if isinstance(data.get("Content"), dict) else {}
        raw_headers = content.get("Headers") if isinstance(content, dict) else None
        headers: list[tuple[str, str]] = []
        if isinstance(raw_headers, dict):
            for name, values in raw_headers.items():
                if isinstance(name, str) and isinstance(values, list):
                    headers += [(name, decode_header(_text(value))) for value in values]
        else:
            headers = [(name, decode_header(str(value))) for name, value in parsed.items()]
        return Mail(**summary.__dict__, headers=headers, text=text, html=html, attachments=[a for a, _ in attachments])

    def part(self, message_id: str, part: str) -> Part:
        _, parsed = self._raw(message_id)
        for attachment, message in _bodies(parsed)[2]:
            if attachment.part == part:
                return Part(attachment.filename, attachment.content_type, _payload(message))
        raise MailNotFound("No such attachment.")

    def delete_all(self) -> None:
        answer = self.send("DELETE", "/api/v1/messages", None)
        if answer.status not in (200, 204):
            raise CatcherError(f"MailHog answered HTTP {answer.status} to deleting the mails.")


# -- Mailpit -----------------------------------------------------------------------------------------


def _mailpit_address(value: Any) -> str:
    if not isinstance(value, dict):
        return ""
    name, address = _text(value.get("Name"), 300), _text(value.get("Address"), 300)
    return email.utils.formataddr((name, address)) if name else address


def _mailpit_addresses(value: Any) -> list[str]:
    return [_mailpit_address(item) for item in value[:100]] if isinstance(value, list) else []


class Mailpit(Adapter):
    """Mailpit: ``/api/v1/messages`` and ``/api/v1/search`` for the list, ``/api/v1/message/{ID}`` (and its
    ``/headers``, ``/part/{PartID}``) for one message, ``DELETE /api/v1/messages``."""

    kind = "mailpit"
    label = "Mailpit"

    def _summary(self, item: Any, date_field: str) -> MailSummary:
        if not isinstance(item, dict) or not isinstance(item.get("ID"), str):
            raise CatcherError("Mailpit listed a message without an ID.")
        return MailSummary(
            id=item["ID"],
            sender=_mailpit_address(item.get("From")),
            recipients=_mailpit_addresses(item.get("To")),
            subject=_text(item.get("Subject")),
            date=parse_date(item.get(date_field)),
            size=_int(item.get("Size")),
        )

    def list(self, *, start: int, limit: int, query: str = "", search_kind: str = "any") -> MailPage:
        page = {"start": str(start), "limit": str(limit)}
        if query:
            quoted = '"' + query.replace('"', " ") + '"'
            search = {"any": query, "from": f"from:{quoted}", "to": f"to:{quoted}"}.get(search_kind, query)
            data = _expect(self.send("GET", "/api/v1/search", {"query": search, **page}), "a search")
        else:
            data = _expect(self.send("GET", "/api/v1/messages", page), "the list")
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise CatcherError("Mailpit's list has no messages.")
        items = [self._summary(item, "Created") for item in data["messages"]]
        total = data.get("messages_count", data.get("total"))
        return MailPage(total=_int(total), start=_int(data.get("start")), items=items)

    def get(self, message_id: str) -> Mail:
        base = f"/api/v1/message/{quote(check_message_id(message_id), safe='@=+')}"
        data = _expect(self.send("GET", base, None), "a message")
        if not isinstance(data, dict):
            raise CatcherError("Mailpit's message is not an object.")
        summary = self._summary(data, "Date")
        raw_headers = _expect(self.send("GET", f"{base}/headers", None), "the headers")
        headers: list[tuple[str, str]] = []
        if isinstance(raw_headers, dict):
            for name, values in raw_headers.items():
                if isinstance(name, str) and isinstance(values, list):
                    headers += [(name, _text(value)) for value in values]
        attachments = []
        for group in ("Attachments", "Inline"):
            items: list[Any] = data[group] if isinstance(data.get(group), list) else []
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("PartID"), str) and PART_ID.match(item["PartID"]):
                    attachments.append(
                        Attachment(
                            part=item["PartID"],
                            filename=_text(item.get("FileName"), 300) or f"part-{item['PartID']}",
                            content_type=_text(item.get("ContentType"), 200) or "application/octet-stream",
                            size=_int(item.get("Size")),
                        )
                    )
        return Mail(
            **summary.__dict__,
            headers=headers,
            text=_text(data.get("Text"), 10**8),
            html=_text(data.get("HTML"), 10**8),
            attachments=attachments,
        )

    def part(self, message_id: str, part: str) -> Part:
        if not PART_ID.match(part):
            raise MailNotFound("No such attachment.")
        mail = self.get(message_id)
        found = next((a for a in mail.attachments if a.part == part), None)
        if found is None:
            raise MailNotFound("No such attachment.")
        answer = self.send("GET", f"/api/v1/message/{quote(message_id, safe='@=+')}/part/{part}", None)
        if answer.status != 200:
            raise MailNotFound("No such attachment.")
        return Part(found.filename, found.content_type, answer.body)

    def delete_all(self) -> None:
        answer = self.send("DELETE", "/api/v1/messages", None)
        if answer.status not in (200, 204):
            raise CatcherError(f"Mailpit answered HTTP {answer.status} to deleting the mails.")


ADAPTERS: dict[str, type[Adapter]] = {MailHog.kind: MailHog, Mailpit.kind: Mailpit}


def detect(send: Send) -> type[Adapter]:
    """Which API answers: MailHog's ``/api/v2/messages`` (an object with ``items``) or Mailpit's
    ``/api/v1/messages`` (an object with ``messages``; MailHog's v1 answers a list there)."""
    data = _json_or_none(send("GET", "/api/v2/messages", {"start": "0", "limit": "1"}))
    if isinstance(data, dict) and "items" in data:
        return MailHog
    data = _json_or_none(send("GET", "/api/v1/messages", {"start": "0", "limit": "1"}))
    if isinstance(data, dict) and "messages" in data:
        return Mailpit
    raise CatcherError("The service answers HTTP but speaks neither MailHog's nor Mailpit's API.")


__all__ = [
    "ADAPTERS",
    "Adapter",
    "Attachment",
    "CatcherError",
    "Mail",
    "MailHog",
    "MailNotFound",
    "MailPage",
    "MailSummary",
    "Mailpit",
    "Part",
    "detect",
]
