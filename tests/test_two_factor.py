"""Two-factor login: the code step, recovery codes, the organization switch, API tokens and half-done logins.

Through Django's test client against PostgreSQL; the browser and the live server (uvicorn, websockets) are in
``test_two_factor_browser.py``.
"""

from __future__ import annotations

import re
from binascii import unhexlify
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django_otp.oath import TOTP

from panel.accounts import services, two_factor
from panel.accounts.models import AuditEvent, Organization, RecoveryCode, TotpDevice
from tests.conftest import PASSWORD


def totp_code(device: TotpDevice, steps_ahead: int = 0) -> str:
    """What the user's authenticator app shows now (or ``steps_ahead`` periods later)."""
    device.refresh_from_db()
    return f"{TOTP(unhexlify(device.key), drift=steps_ahead).token():06d}"


def enroll(user: Any) -> tuple[TotpDevice, list[str]]:
    """Give a user a confirmed authenticator (as the enrolment page does) and return it with the recovery codes."""
    device = two_factor.start_enrollment(user)
    codes = two_factor.confirm_enrollment(device=device, code=totp_code(device))
    device.refresh_from_db()
    # The enrolment consumed the current period; logins in the test use the next one.
    return device, codes


def password_step(client: Client, username: str, password: str = PASSWORD) -> Any:
    return client.post(reverse("login"), {"username": username, "password": password})


def code_step(client: Client, code: str) -> Any:
    return client.post(reverse("two_factor_login"), {"code": code})


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_it_asks_for_a_code_after_the_password_and_logs_in_with_it(users: dict[str, Any]) -> None:
    device, _ = enroll(users["alice"])
    client = Client()
    response = password_step(client, "alice")
    assert response.status_code == 302 and response.url == reverse("two_factor_login")
    # Half-way: not signed in anywhere.
    assert not signed_in(client)
    assert client.get(reverse("server_list")).url.startswith(reverse("login"))
    page = client.get(reverse("two_factor_login")).content.decode()
    assert "authenticator app" in page and "alice" in page

    response = code_step(client, "000000" if totp_code(device, 1) != "000000" else "111111")
    assert response.status_code == 200 and "That code is not right" in response.content.decode()
    assert not signed_in(client)
    failed = AuditEvent.objects.get(action="two_factor.failed")
    assert failed.is_security and failed.detail == {"username": "alice", "purpose": "login"}

    code = totp_code(device, 1)
    response = code_step(client, code)
    assert response.status_code == 302 and response.url == reverse("home")
    assert signed_in(client)
    assert client.get(reverse("server_list")).status_code == 200
    assert client.get("/api/v1/servers/").status_code == 200
    assert AuditEvent.objects.filter(action="login.succeeded", actor=users["alice"]).count() == 1

    # The same code does not log in a second time (someone who watched it being typed).
    other = Client()
    password_step(other, "alice")
    response = code_step(other, code)
    assert "That code is not right" in response.content.decode()
    assert not signed_in(other)


def test_it_accepts_a_recovery_code_once(users: dict[str, Any]) -> None:
    _, codes = enroll(users["olga"])
    assert len(codes) == 10 and len(set(codes)) == 10
    # Only hashes are stored.
    assert not RecoveryCode.objects.filter(code_hash__in=codes).exists()

    first = Client()
    password_step(first, "olga")
    response = code_step(first, codes[3].upper().replace("-", " "))  # typed loosely: case and separators
    assert response.status_code == 302 and signed_in(first)
    assert AuditEvent.objects.filter(action="two_factor.recovery_code_used", actor=users["olga"]).exists()
    assert two_factor.unused_recovery_codes(users["olga"]) == 9
    assert "9 left" in first.get(reverse("home"), follow=True).content.decode()

    second = Client()
    password_step(second, "olga")
    response = code_step(second, codes[3])
    assert response.status_code == 200 and "works only once" in response.content.decode()
    assert not signed_in(second)
    # Another one still works.
    assert code_step(second, codes[4]).status_code == 302 and signed_in(second)


def test_it_counts_failed_codes_toward_the_lockout(users: dict[str, Any]) -> None:
    device, _ = enroll(users["alice"])
    client = Client()
    password_step(client, "alice")
    for _ in range(settings.LOGIN_LOCKOUT_ATTEMPTS):
        assert "That code is not right" in code_step(client, "999999-not-a-code").content.decode()
    # Locked now: even the right code is refused without being checked, and so is the password step.
    response = code_step(client, totp_code(device, 1))
    assert "Too many failed attempts" in response.content.decode()
    assert not signed_in(client)
    assert "Too many failed attempts" in password_step(Client(), "alice").content.decode()
    assert AuditEvent.objects.filter(action="two_factor.failed").count() == settings.LOGIN_LOCKOUT_ATTEMPTS
    assert AuditEvent.objects.filter(action="login.locked").count() == 2
    # Nobody else is affected.
    assert password_step(Client(), "olga").status_code == 302


def test_it_forgets_a_pending_login_after_its_time(users: dict[str, Any], settings: Any) -> None:
    device, _ = enroll(users["alice"])
    client = Client()
    password_step(client, "alice")
    session = client.session
    session[two_factor.PENDING_SESSION_KEY]["since"] -= settings.TWO_FACTOR_LOGIN_SECONDS + 1
    session.save()
    response = code_step(client, totp_code(device, 1))
    assert response.status_code == 302 and response.url == reverse("login")
    assert not signed_in(client)


def switch(client: Client, organization: Organization, required: bool) -> Any:
    data = {"required": "on"} if required else {}
    return client.post(reverse("organization_two_factor", args=[organization.pk]), data, follow=True)


def verified_client(user: Any, device: TotpDevice) -> Client:
    """A browser that logged in with password and code."""
    client = Client()
    password_step(client, user.get_username())
    assert code_step(client, totp_code(device, 1)).status_code == 302
    return client


def test_it_lets_only_owners_with_two_factor_switch_the_requirement(
    orgs: dict[str, Any], users: dict[str, Any]
) -> None:
    alice = Client()
    password_step(alice, "alice")
    page = switch(alice, orgs["a"], True).content.decode()
    assert "Turn on two-factor login for your own account first" in page
    orgs["a"].refresh_from_db()
    assert not orgs["a"].require_two_factor

    olga = Client()
    olga.force_login(users["olga"])
    assert olga.post(reverse("organization_two_factor", args=[orgs["a"].pk]), {"required": "on"}).status_code == 404

    device, _ = enroll(users["alice"])
    alice = verified_client(users["alice"], device)
    page = switch(alice, orgs["a"], True).content.decode()
    assert "now requires two-factor login" in page
    assert 'data-testid="two-factor-switch"' in page and "Stop requiring it" in page
    orgs["a"].refresh_from_db()
    assert orgs["a"].require_two_factor
    event = AuditEvent.objects.get(action="organization.two_factor_required")
    assert event.organization == orgs["a"] and event.actor == users["alice"]

    switch(alice, orgs["a"], False)
    orgs["a"].refresh_from_db()
    assert not orgs["a"].require_two_factor
    assert AuditEvent.objects.filter(action="organization.two_factor_optional", organization=orgs["a"]).exists()


def require(organization: Organization) -> None:
    Organization.objects.filter(pk=organization.pk).update(require_two_factor=True)


def test_it_sends_staff_without_two_factor_to_enroll_and_leaves_customers_alone(
    orgs: dict[str, Any], users: dict[str, Any]
) -> None:
    require(orgs["a1"])  # the customer organization: its provider's staff act there too
    for name in ("olga", "victor", "alice"):
        assert two_factor.two_factor_required(users[name]), name
    assert not two_factor.two_factor_required(users["carol"])
    assert not two_factor.two_factor_required(users["bob"])

    olga = Client()
    response = password_step(olga, "olga")
    assert response.status_code == 302 and response.url == reverse("two_factor_enroll")
    assert not signed_in(olga)
    assert olga.get(reverse("server_list")).url.startswith(reverse("login"))
    assert olga.get("/api/v1/servers/").status_code in (401, 403)
    # Without a code, the login cannot be finished on the code page either.
    assert olga.get(reverse("two_factor_login")).url == reverse("two_factor_enroll")

    page = olga.get(reverse("two_factor_enroll")).content.decode()
    assert "Required by" in page and "Alpha Customer" in page
    assert "<svg" in page and 'class="segno"' in page
    assert " style=" not in page and "<style" not in page  # the CSP allows no inline styles
    uri = re.search(r'data-testid="otpauth-uri">([^<]+)<', page)
    assert uri is not None and uri.group(1).startswith("otpauth://totp/Doodba%20Panel%3Aolga?secret=")
    device = TotpDevice.objects.get(user=users["olga"], confirmed=False)
    # A wrong code keeps the page; the right one turns it on, shows the recovery codes once and finishes the login.
    assert "not right" in olga.post(reverse("two_factor_enroll"), {"code": "12"}).content.decode()
    response = olga.post(reverse("two_factor_enroll"), {"code": totp_code(device)})
    page = response.content.decode()
    assert response.status_code == 200 and "Your recovery codes" in page
    shown = re.findall(r"<li><code>([a-z0-9-]{19})</code></li>", page)
    assert len(shown) == 10
    assert signed_in(olga)
    assert olga.get(reverse("server_list")).status_code == 200
    assert olga.get("/api/v1/servers/").status_code == 200
    assert AuditEvent.objects.filter(action="two_factor.enabled", actor=users["olga"], organization=orgs["a"]).exists()

    # A customer of the requiring organization logs in with the password alone.
    carol = Client()
    response = password_step(carol, "carol")
    assert response.status_code == 302 and response.url == reverse("home")
    assert signed_in(carol)
    assert carol.get(reverse("project_list")).status_code == 200
    assert carol.get("/api/v1/projects/").status_code == 200


def test_it_stops_a_signed_in_staff_member_when_the_switch_goes_on(orgs: dict[str, Any], users: dict[str, Any]) -> None:
    olga = Client()
    assert password_step(olga, "olga").status_code == 302 and signed_in(olga)
    assert olga.get("/api/v1/servers/").status_code == 200
    require(orgs["a"])
    # The next page is the enrolment; the API no longer takes the session; logging out still works.
    response = olga.get(reverse("server_list"))
    assert response.status_code == 302 and response.url == reverse("two_factor_enroll")
    assert olga.get(reverse("api_tokens")).url == reverse("two_factor_enroll")
    assert olga.get("/api/v1/servers/").status_code in (401, 403)
    assert olga.get(reverse("two_factor_enroll")).status_code == 200
    device = TotpDevice.objects.get(user=users["olga"])
    olga.post(reverse("two_factor_enroll"), {"code": totp_code(device)})
    assert olga.get(reverse("server_list")).status_code == 200
    assert olga.get("/api/v1/servers/").status_code == 200


def test_it_keeps_api_tokens_working(orgs: dict[str, Any], users: dict[str, Any], inventory: dict[str, Any]) -> None:
    _, olga_token = services.create_token(user=users["olga"], name="ci", scope="write")
    _, alice_token = services.create_token(user=users["alice"], name="ci", scope="read")
    require(orgs["a"])
    enroll(users["alice"])
    api = Client()
    # A staff member the switch requires but who has not enrolled yet, and one who enrolled: tokens stand alone.
    for token in (olga_token, alice_token):
        response = api.get("/api/v1/servers/", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.content
        assert [server["name"] for server in response.json()["results"]] == ["alpha-1"]
    # A write: authenticated and allowed (an unknown environment answers 404, not 401/403).
    response = api.post("/api/v1/environments/999999/deploy/", {}, headers={"authorization": f"Bearer {olga_token}"})
    assert response.status_code == 404


def test_it_gives_a_half_logged_in_session_no_api_data(users: dict[str, Any], inventory: dict[str, Any]) -> None:
    enroll(users["alice"])
    client = Client()
    password_step(client, "alice")
    for path in ("/api/v1/servers/", "/api/v1/projects/", "/api/v1/jobs/", "/api/v1/tokens/"):
        response = client.get(path)
        assert response.status_code in (401, 403), path
        assert "alpha-1" not in response.content.decode()
    response = client.post("/api/v1/tokens/", {"name": "sneaky", "scope": "write"})
    assert response.status_code in (401, 403)
    assert not users["alice"].api_tokens.exists()

    # A session signed in before the user enrolled (elsewhere) is no longer enough: the API refuses it, and the
    # next page logs it out to ask for a code.
    old = Client()
    old.force_login(users["olga"])
    enroll(users["olga"])
    assert old.get("/api/v1/servers/").status_code in (401, 403)
    response = old.get(reverse("server_list"))
    assert response.status_code == 302 and response.url == reverse("login")
    assert not signed_in(old)


def test_it_regenerates_recovery_codes_and_the_old_ones_stop_working(users: dict[str, Any]) -> None:
    device, old_codes = enroll(users["alice"])
    client = verified_client(users["alice"], device)
    assert "10 unused" in client.get(reverse("two_factor_settings")).content.decode()
    response = client.post(reverse("two_factor_recovery_codes"), {"code": "123456"}, follow=True)
    assert "That code is not right" in response.content.decode()
    response = client.post(reverse("two_factor_recovery_codes"), {"code": old_codes[0]})
    page = response.content.decode()
    new_codes = re.findall(r"<li><code>([a-z0-9-]{19})</code></li>", page)
    assert len(new_codes) == 10 and not set(new_codes) & set(old_codes)
    assert "earlier codes no longer work" in page
    assert AuditEvent.objects.filter(action="two_factor.recovery_codes_regenerated").exists()

    other = Client()
    password_step(other, "alice")
    assert not signed_in(other) and code_step(other, old_codes[1]).status_code == 200
    assert code_step(other, new_codes[0]).status_code == 302 and signed_in(other)


def test_it_turns_two_factor_off_with_the_password_and_a_code(orgs: dict[str, Any], users: dict[str, Any]) -> None:
    device, codes = enroll(users["alice"])
    client = verified_client(users["alice"], device)
    url = reverse("two_factor_disable")
    page = client.post(url, {"password": "wrong", "code": codes[0]}, follow=True).content.decode()
    assert "The password is not right" in page
    page = client.post(url, {"password": PASSWORD, "code": "000000x"}, follow=True).content.decode()
    assert "That code is not right" in page
    assert TotpDevice.objects.filter(user=users["alice"]).exists()
    assert AuditEvent.objects.filter(action="two_factor.failed", actor_name="alice").count() == 2

    response = client.post(url, {"password": PASSWORD, "code": codes[0]})
    assert response.status_code == 302 and response.url == reverse("two_factor_settings")
    assert not TotpDevice.objects.filter(user=users["alice"]).exists()
    assert not RecoveryCode.objects.filter(user=users["alice"]).exists()
    assert AuditEvent.objects.filter(action="two_factor.disabled", actor=users["alice"]).exists()
    # The password alone logs in again.
    assert password_step(Client(), "alice").status_code == 302

    # Where an organization requires it, turning it off means setting up a new authenticator right away.
    device, codes = enroll(users["olga"])
    require(orgs["a"])
    olga = verified_client(users["olga"], device)
    response = olga.post(url, {"password": PASSWORD, "code": codes[0]})
    assert response.url == reverse("two_factor_enroll")
    assert olga.get(reverse("server_list")).url == reverse("two_factor_enroll")


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "٣٣٣٣٣٣", "\x00" * 6, "x" * 41])
def test_it_refuses_odd_codes_without_error(users: dict[str, Any], code: str) -> None:
    enroll(users["alice"])
    client = Client()
    password_step(client, "alice")
    response = code_step(client, code)
    assert response.status_code in (200, 400)  # the form's error, or a clear 400 for a NUL byte
    assert not signed_in(client)
