"""The MailHog and Mailpit adapters against recorded answers (Mailpit has no lab catcher: the lab's speaks
MailHog), and API detection."""

from __future__ import annotations

import datetime

import pytest

from mailcatcher.adapters import CatcherError, MailHog, MailNotFound, Mailpit, check_message_id, detect
from tests.mail_fixtures import MAILHOG_ID, MAILPIT_ID, Recorded, answer, mailhog, mailpit


def test_it_detects_mailpit_and_mailhog() -> None:
    assert detect(mailpit()) is Mailpit
    assert detect(mailhog()) is MailHog
    with pytest.raises(CatcherError):
        detect(Recorded({("GET", "/api/v1/messages"): answer(200, [])}))


def test_it_lists_mailpit_mails() -> None:
    send = mailpit()
    page = Mailpit(send).list(start=0, limit=50)
    assert send.calls == [("GET", "/api/v1/messages", {"start": "0", "limit": "50"})]
    assert page.total == 2 and [m.id for m in page.items] == [MAILPIT_ID, "5dnNhC3hsQGF2HD6xbbiKm"]
    first, second = page.items
    assert first.sender == "Odoo Test <odoo@test.panel-demo.example.com>"
    assert first.recipients == ["Jane Smith <jane@example.com>"]
    assert first.subject == "Your invoice INV/2024/00042"
    assert first.date == datetime.datetime(2024, 6, 10, 12, 34, 56, 789000, tzinfo=datetime.UTC)
    assert second.sender == "noreply@test.panel-demo.example.com"
    assert second.recipients == ["admin@example.com", "Bob <bob@example.com>"]


def test_it_searches_mailpit_by_field() -> None:
    send = mailpit()
    page = Mailpit(send).list(start=0, limit=10, query='bob "x', search_kind="to")
    assert send.calls == [("GET", "/api/v1/search", {"query": 'to:"bob  x"', "start": "0", "limit": "10"})]
    assert page.total == 1 and page.items[0].subject == "Password reset"
    Mailpit(send).list(start=0, limit=10, query="reset")
    assert send.calls[-1][2] == {"query": "reset", "start": "0", "limit": "10"}


def test_it_reads_one_mailpit_mail() -> None:
    mail = Mailpit(mailpit()).get(MAILPIT_ID)
    assert mail.text.startswith("Dear Jane,")
    assert "<script>" in mail.html  # the adapter passes it on; the page sandboxes it
    assert ("Subject", "Your invoice INV/2024/00042") in mail.headers
    assert [(a.part, a.filename, a.content_type, a.size) for a in mail.attachments] == [
        ("2", "INV_2024_00042.pdf", "application/pdf", 2811),
        ("1.2", "logo.png", "image/png", 96),
    ]
    assert mail.date == datetime.datetime(2024, 6, 10, 12, 34, 56, tzinfo=datetime.UTC)
    part = Mailpit(mailpit()).part(MAILPIT_ID, "2")
    assert part.data == b"%PDF-1.4 invoice" and part.filename == "INV_2024_00042.pdf"
    with pytest.raises(MailNotFound):
        Mailpit(mailpit()).part(MAILPIT_ID, "9")
    with pytest.raises(MailNotFound):
        Mailpit(mailpit()).get("unknownid")


def test_it_deletes_all_mailpit_mails() -> None:
    send = mailpit()
    Mailpit(send).delete_all()
    assert send.calls == [("DELETE", "/api/v1/messages", None)]
    with pytest.raises(CatcherError):
        Mailpit(Recorded({("DELETE", "/api/v1/messages"): answer(500, b"boom")})).delete_all()


def test_it_reads_mailhog_list_and_message() -> None:
    send = mailhog()
    page = MailHog(send).list(start=0, limit=5, query="jane", search_kind="to")
    assert send.calls == [("GET", "/api/v2/search", {"kind": "to", "query": "jane", "start": "0", "limit": "5"})]
    assert page.total == 1
    summary = page.items[0]
    assert summary.subject == "Café order" and summary.sender == "odoo@test.panel-demo.example.com"
    assert summary.recipients == ["jane@example.com"]
    mail = MailHog(send).get(MAILHOG_ID)
    assert mail.text == "Your order is ready.\r\n" and mail.html == "" and mail.attachments == []
    assert send.calls[-1] == ("GET", f"/api/v1/messages/{MAILHOG_ID}", None)


@pytest.mark.parametrize("bad", ["", "../../api/v1/messages", "a/b", "-x", "a b", "x" * 300, "a%2Fb", "a?b"])
def test_it_never_puts_odd_ids_in_paths(bad: str) -> None:
    send = mailpit()
    with pytest.raises(MailNotFound):
        check_message_id(bad)
    with pytest.raises(MailNotFound):
        Mailpit(send).get(bad)
    with pytest.raises(MailNotFound):
        MailHog(send).get(bad)
    assert send.calls == []


def test_it_refuses_odd_shapes() -> None:
    with pytest.raises(CatcherError):
        Mailpit(Recorded({("GET", "/api/v1/messages"): answer(200, {"messages": [{"no": "id"}]})})).list(
            start=0, limit=1
        )
    with pytest.raises(CatcherError):
        MailHog(Recorded({("GET", "/api/v2/messages"): answer(200, b"not json")})).list(start=0, limit=1)
    with pytest.raises(CatcherError):
        MailHog(Recorded({("GET", "/api/v2/messages"): answer(502, b"")})).list(start=0, limit=1)
