"""Recorded answers of the mail catchers' APIs (``tests/fixtures_mail/*.json``, in the shapes of Mailpit's and
MailHog's own docs and source) and a ``send`` that serves them, for adapter and view tests without a catcher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from panel.remote.tunnel import HTTPAnswer

FIXTURES = Path(__file__).parent / "fixtures_mail"
MAILPIT_ID = "iAfZVVe2UQfNSG5BAjgYwa"
MAILHOG_ID = "1DP3PVbJdXbCHQL-xH1eIqkbgT7KGhFqdy5ZpMHRgyc=@mailhog.example"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def answer(status: int, body: Any = b"") -> HTTPAnswer:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HTTPAnswer(status=status, headers={"content-type": "application/json"}, body=data)


class Recorded:
    """``send`` for an adapter: answers from a table ``{(method, path): answer}``, 404 otherwise; keeps the calls."""

    def __init__(self, table: dict[tuple[str, str], HTTPAnswer]) -> None:
        self.table = table
        self.calls: list[tuple[str, str, dict[str, str] | None]] = []

    def __call__(self, method: str, path: str, query: dict[str, str] | None) -> HTTPAnswer:
        self.calls.append((method, path, query))
        return self.table.get((method, path), answer(404, b"404 page not found"))


def mailpit() -> Recorded:
    """Mailpit v1 as it answers with two caught mails."""
    base = f"/api/v1/message/{MAILPIT_ID}"
    return Recorded(
        {
            ("GET", "/api/v1/messages"): answer(200, fixture("mailpit_messages.json")),
            ("GET", "/api/v1/search"): answer(200, fixture("mailpit_search.json")),
            ("GET", base): answer(200, fixture("mailpit_message.json")),
            ("GET", f"{base}/headers"): answer(200, fixture("mailpit_headers.json")),
            ("GET", f"{base}/part/2"): answer(200, b"%PDF-1.4 invoice"),
            ("DELETE", "/api/v1/messages"): answer(200, b"ok"),
        }
    )


def mailhog() -> Recorded:
    """MailHog as it answers with one caught mail (v2 list and search, v1 message and delete)."""
    listing = fixture("mailhog_messages.json")
    return Recorded(
        {
            ("GET", "/api/v2/messages"): answer(200, listing),
            ("GET", "/api/v2/search"): answer(200, listing),
            ("GET", "/api/v1/messages"): answer(200, listing["items"]),
            ("GET", f"/api/v1/messages/{MAILHOG_ID}"): answer(200, listing["items"][0]),
            ("DELETE", "/api/v1/messages"): answer(200),
        }
    )
