"""The terminal without the lab: who gets a ticket, how a ticket is used once, the command a profile builds, the
recording format, the pages and their scoping."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from panel.accounts.models import AuditEvent
from panel.inventory.choices import EnvironmentKind
from terminal.models import TerminalSession, TerminalTicket
from terminal.services import (
    Recorder,
    TerminalRefused,
    clamp_size,
    consume_ticket,
    environment_for_terminal,
    issue_ticket,
    remote_argv,
)

CONTAINER = "a" * 64


def client_of(user: Any, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def ticket_url(environment: Any) -> str:
    return f"/environments/{environment.pk}/terminal/ticket/"


@pytest.fixture
def staging(inventory: dict[str, Any]) -> Any:
    environment = inventory["env_a"]
    environment.kind = EnvironmentKind.STAGING
    environment.save()
    return environment


@pytest.mark.django_db
def test_owners_and_operators_get_a_ticket_nobody_else(
    staging: Any, inventory: dict[str, Any], users: dict[str, Any]
) -> None:
    for name in ("alice", "olga"):
        answer = client_of(users[name]).post(ticket_url(staging), {"profile": "shell"})
        assert answer.status_code == 200, name
        assert answer.json()["ws_path"] == f"/ws/environments/{staging.pk}/terminal/"
        assert len(answer.json()["ticket"]) > 30
    for name in ("victor", "carol", "bob"):
        answer = client_of(users[name]).post(ticket_url(staging), {"profile": "shell"})
        assert answer.status_code == 404, name
        assert client_of(users[name]).get(f"/environments/{staging.pk}/terminal/").status_code == 404
    # Bob owns B: B's environment is his, A1's is not.
    bob = client_of(users["bob"])
    assert bob.post(ticket_url(inventory["env_b"]), {"profile": "shell", "confirm": "yes"}).status_code == 200
    assert TerminalTicket.objects.count() == 3
    assert AuditEvent.objects.filter(action="terminal.refused", is_security=True).count() == 3


@pytest.mark.django_db
def test_the_ticket_post_needs_csrf_a_known_profile_and_confirmation_for_production(
    inventory: dict[str, Any], users: dict[str, Any]
) -> None:
    production = inventory["env_a"]
    assert production.kind == EnvironmentKind.PRODUCTION
    alice = client_of(users["alice"], csrf=True)
    assert alice.post(ticket_url(production), {"profile": "shell", "confirm": "yes"}).status_code == 403  # no CSRF
    alice = client_of(users["alice"])
    assert alice.get(ticket_url(production)).status_code == 405
    refused = alice.post(ticket_url(production), {"profile": "shell"})
    assert refused.status_code == 400 and refused.json()["reason"] == "unconfirmed"
    for profile in ("", "bash", "sh -c id", "../x", "shell\x00"):
        assert alice.post(ticket_url(production), {"profile": profile, "confirm": "yes"}).status_code == 400
    assert alice.post(ticket_url(production), {"profile": "psql", "confirm": "yes"}).status_code == 200
    assert alice.post("/environments/999999/terminal/ticket/", {"profile": "shell"}).status_code == 404
    assert TerminalTicket.objects.count() == 1


@pytest.mark.django_db
def test_an_organization_or_its_provider_turns_terminals_off(
    staging: Any, orgs: dict[str, Any], users: dict[str, Any]
) -> None:
    alice = client_of(users["alice"])
    page = f"/environments/{staging.pk}/"
    assert 'data-testid="environment-terminal"' in alice.get(page).content.decode()
    assert 'data-testid="environment-terminal"' not in client_of(users["victor"]).get(page).content.decode()
    # The provider (A) owns the switch of A1 too; operators and other organizations cannot reach it.
    assert (
        client_of(users["olga"]).post(f"/terminal/organizations/{orgs['a1'].pk}/", {"enabled": "no"}).status_code == 404
    )
    assert (
        client_of(users["bob"]).post(f"/terminal/organizations/{orgs['a1'].pk}/", {"enabled": "no"}).status_code == 404
    )
    assert alice.post(f"/terminal/organizations/{orgs['a1'].pk}/", {"enabled": "no"}).status_code == 302
    orgs["a1"].refresh_from_db()
    assert not orgs["a1"].terminal_enabled
    assert alice.post(ticket_url(staging), {"profile": "shell"}).status_code == 403
    assert alice.get(f"/environments/{staging.pk}/terminal/").status_code == 403
    assert 'data-testid="environment-terminal"' not in alice.get(page).content.decode()
    assert AuditEvent.objects.filter(action="terminal.disabled", actor=users["alice"]).exists()
    alice.post(f"/terminal/organizations/{orgs['a1'].pk}/", {"enabled": "yes"})
    assert alice.post(ticket_url(staging), {"profile": "shell"}).status_code == 200
    orgs["a"].terminal_enabled = False
    orgs["a"].save()
    with pytest.raises(TerminalRefused) as refused:
        environment_for_terminal(users["alice"], staging.pk)
    assert refused.value.code == 4403


@pytest.mark.django_db
def test_a_ticket_opens_once_for_its_user_and_environment_before_it_expires(
    staging: Any, inventory: dict[str, Any], users: dict[str, Any]
) -> None:
    alice, olga = users["alice"], users["olga"]

    def fresh() -> str:
        return issue_ticket(user=alice, environment=staging, profile="psql", confirmed=False)

    first = fresh()
    assert TerminalTicket.objects.get().token_hash != first  # only the hash is stored
    environment, profile = consume_ticket(first, user=alice, environment_id=staging.pk)
    assert (environment.pk, profile) == (staging.pk, "psql")
    reasons = []
    for token, user, environment_id in [
        (first, alice, staging.pk),  # reused
        (fresh(), olga, staging.pk),  # someone else's
        (fresh(), alice, inventory["env_b"].pk),  # another environment
        ("x" * 43, alice, staging.pk),  # unknown
        (None, alice, staging.pk),
        ({"a": 1}, alice, staging.pk),
    ]:
        with pytest.raises(TerminalRefused) as refused:
            consume_ticket(token, user=user, environment_id=environment_id)
        reasons.append(refused.value.reason)
    assert reasons == [
        "reused_ticket",
        "foreign_ticket",
        "other_environment",
        "unknown_ticket",
        "no_ticket",
        "no_ticket",
    ]
    expired = fresh()
    TerminalTicket.objects.filter(used_at__isnull=True).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(TerminalRefused) as refused:
        consume_ticket(expired, user=alice, environment_id=staging.pk)
    assert refused.value.reason == "expired_ticket"
    # A ticket whose holder lost the role since it was issued opens nothing.
    token = fresh()
    alice.memberships.update(role="viewer")
    with pytest.raises(TerminalRefused) as refused:
        consume_ticket(token, user=alice, environment_id=staging.pk)
    assert refused.value.reason == "not_found"


def test_profiles_build_their_command_on_the_server_side() -> None:
    shell = remote_argv("shell", CONTAINER, "", "term-1")
    assert shell[:3] == ["env", "DOODBA_PANEL_TERMINAL=term-1", "docker"]
    assert shell[3:9] == ["exec", "-it", "-e", "DOODBA_PANEL_TERMINAL=term-1", "-e", "TERM=xterm-256color"]
    assert shell[9] == CONTAINER
    psql = remote_argv("psql", CONTAINER, "prod", "term-1")
    assert psql[-2:] == ["sh", "prod"] and "psql" in psql[-3]
    assert remote_argv("odoo-shell", CONTAINER, "prod", "term-1")[-4:] == ["odoo", "shell", "-d", "prod"]
    for container in ("abc", "my-container", "A" * 64, CONTAINER + ";id"):
        with pytest.raises(ValueError):
            remote_argv("shell", container, "", "t")
    with pytest.raises(ValueError):
        remote_argv("psql", CONTAINER, "x; drop", "t")
    with pytest.raises(ValueError):
        remote_argv("bash", CONTAINER, "", "t")
    assert clamp_size("100", 30) == (100, 30)
    assert clamp_size(10**9, -5) == (500, 2)
    assert clamp_size("x", None) == (80, 24)


def test_recordings_are_asciicast_v2_output_only(settings: Any, tmp_path: Any) -> None:
    settings.DATA_DIR = tmp_path
    recorder = Recorder("one.cast", 100, 30, "shell on x")
    recorder.output("héllo".encode()[:2])  # a character split across two reads
    recorder.output("héllo".encode()[2:] + b"\r\n")
    recorder.resize(120, 40)
    recorder.close()
    lines = (tmp_path / "terminal" / "one.cast").read_text().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and (header["width"], header["height"]) == (100, 30)
    events = [json.loads(line) for line in lines[1:]]
    assert "".join(e[2] for e in events if e[1] == "o") == "héllo\r\n"
    assert [e[1] for e in events][-1] == "r" and events[-1][2] == "120x40"
    assert {e[1] for e in events} <= {"o", "r"}
    settings.TERMINAL_RECORDING_MAX_BYTES = 300
    recorder = Recorder("two.cast", 80, 24, "t")
    for _ in range(50):
        recorder.output(b"x" * 40)
    recorder.close()
    assert recorder.truncated and (tmp_path / "terminal" / "two.cast").stat().st_size < 500


@pytest.mark.django_db
def test_recordings_are_listed_and_replayed_for_owners_only(
    settings: Any, tmp_path: Any, staging: Any, orgs: dict[str, Any], users: dict[str, Any]
) -> None:
    settings.DATA_DIR = tmp_path
    session = TerminalSession.objects.create(
        environment=staging, environment_name=str(staging), organization=orgs["a1"], user=users["olga"],
        username="olga", profile="shell", container=CONTAINER, tag="term-x", recording="1-term-x.cast",
    )  # fmt: skip
    (tmp_path / "terminal").mkdir()
    (tmp_path / "terminal" / "1-term-x.cast").write_text(
        '{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "hi"]\n'
    )
    alice = client_of(users["alice"])
    assert f'data-session="{session.pk}"' in alice.get("/terminal/sessions/").content.decode()
    assert 'data-testid="terminal-replay"' in alice.get(f"/terminal/sessions/{session.pk}/").content.decode()
    cast = alice.get(f"/terminal/sessions/{session.pk}/cast/")
    assert cast.status_code == 200 and cast["Content-Type"] == "application/x-asciicast"
    assert b'"hi"' in b"".join(cast.streaming_content)
    for name in ("olga", "victor", "carol", "bob"):
        client = client_of(users[name])
        assert f'data-session="{session.pk}"' not in client.get("/terminal/sessions/").content.decode()
        assert client.get(f"/terminal/sessions/{session.pk}/").status_code == 404, name
        assert client.get(f"/terminal/sessions/{session.pk}/cast/").status_code == 404, name
    assert alice.get("/terminal/sessions/99999/").status_code == 404
