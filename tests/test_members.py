"""Organizations, members and single-use invitations: who may manage them, and links that work once."""

from __future__ import annotations

import hashlib
import re
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.db import connection, connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from panel.accounts import services
from panel.accounts.models import AuditEvent, Invitation, Membership, Organization
from panel.accounts.services import InvitationInvalid, LastOwner, create_token
from panel.inventory.models import Project
from tests.conftest import PASSWORD

NEW_PASSWORD = "violet umbrella canoe 8181"
INVALID_TEXT = "This invitation link is not valid (it may have expired or been used)"


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def main_of(response: Any) -> str:
    """The page's <main> (the layout carries a fresh CSRF token on every response)."""
    match = re.search(r"<main.*?</main>", response.content.decode(), re.S)
    assert match, response.content[:500]
    return match.group(0)


def invite(client: Client, organization: Organization, email: str, role: str) -> str:
    """Invite through the members page; returns the link it shows once."""
    response = client.post(reverse("invitation_create", args=[organization.pk]), {"email": email, "role": role})
    assert response.status_code == 200, response.content[:2000]
    link = response.context["invite_link"]
    assert link and link in response.content.decode()
    return str(link)


def path_of(link: str) -> str:
    return "/" + link.split("/", 3)[3]


def accept_anonymously(link: str, username: str, password: str = NEW_PASSWORD) -> tuple[Client, Any]:
    client = Client()
    response = client.post(path_of(link), {"username": username, "password1": password, "password2": password})
    return client, response


def invalid_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="invitation.invalid", is_security=True))


@pytest.mark.django_db
def test_it_lets_an_owner_create_a_customer_organization_managed_by_hers(users: Any, orgs: dict[str, Any]) -> None:
    alice = client_for(users["alice"])
    page = alice.get(reverse("organization_list"))
    assert page.status_code == 200
    assert "Alpha Customer" in page.content.decode() and "Bravo" not in page.content.decode()
    response = alice.post(
        reverse("organization_list"), {"name": "Charlie Shop", "slug": "charlie", "managed_by": orgs["a"].pk}
    )
    charlie = Organization.objects.get(slug="charlie")
    assert response.status_code == 302 and response["Location"] == reverse("organization_members", args=[charlie.pk])
    assert charlie.managed_by == orgs["a"] and charlie.name == "Charlie Shop"
    assert AuditEvent.objects.filter(action="organization.created", organization=charlie, actor=users["alice"]).exists()

    # Names and slugs go through the validators; a taken slug is refused.
    for name, slug in [("<script>x</script>", "ok"), ("Fine", "-oProxy"), ("Fine", "a;b"), ("Other", "charlie")]:
        bad = alice.post(reverse("organization_list"), {"name": name, "slug": slug, "managed_by": orgs["a"].pk})
        assert bad.status_code == 200 and bad.context["form"].errors, (name, slug)
    assert Organization.objects.count() == 4

    # Nobody else can make an organization managed by A: not its operator, not a customer, not B's owner.
    for username in ("olga", "victor", "carol"):
        refused = client_for(users[username]).post(
            reverse("organization_list"), {"name": "Sneaky", "slug": "sneaky", "managed_by": orgs["a"].pk}
        )
        assert refused.status_code == 404, username
    bob = client_for(users["bob"]).post(
        reverse("organization_list"), {"name": "Sneaky", "slug": "sneaky", "managed_by": orgs["a"].pk}
    )
    assert bob.status_code == 200 and "managed_by" in bob.context["form"].errors
    # A customer organization manages nothing: its owner cannot nest organizations under it.
    dave = Membership.objects.create(
        user=get_user_model().objects.create_user("dave", password=PASSWORD), organization=charlie, role="owner"
    ).user
    nested = client_for(dave).post(
        reverse("organization_list"), {"name": "Nested", "slug": "nested", "managed_by": charlie.pk}
    )
    assert nested.status_code == 404
    assert not Organization.objects.filter(slug__in=["sneaky", "nested"]).exists()


@pytest.mark.django_db
def test_it_renames_an_organization_for_its_owners_only(users: Any, orgs: dict[str, Any]) -> None:
    url = reverse("organization_rename", args=[orgs["a1"].pk])
    assert client_for(users["olga"]).post(url, {"name": "Hijacked"}).status_code == 404
    assert client_for(users["bob"]).post(url, {"name": "Hijacked"}).status_code == 404
    assert client_for(users["alice"]).post(url, {"name": "<b>x</b>"}).status_code == 400
    assert client_for(users["alice"]).post(url, {"name": "Alpha Customer Ltd"}).status_code == 302
    orgs["a1"].refresh_from_db()
    assert orgs["a1"].name == "Alpha Customer Ltd" and orgs["a1"].slug == "alpha-customer"
    assert AuditEvent.objects.filter(action="organization.renamed", organization=orgs["a1"]).exists()


@pytest.mark.django_db
def test_it_invites_a_customer_whose_link_works_once(users: Any, orgs: dict[str, Any]) -> None:
    alice = client_for(users["alice"])
    link = invite(alice, orgs["a1"], "carol2@example.com", "customer")
    assert AuditEvent.objects.filter(action="invitation.created", organization=orgs["a1"]).exists()

    # The anonymous holder sees what they are invited to, chooses a name and a password.
    page = Client().get(path_of(link))
    assert page.status_code == 200 and "Alpha Customer" in page.content.decode()
    assert page["Cache-Control"].startswith("max-age=0")
    client, response = accept_anonymously(link, "carol2")
    assert response.status_code == 302 and response["Location"] == reverse("home")
    carol2 = get_user_model().objects.get(username="carol2")
    assert carol2.email == "carol2@example.com" and carol2.check_password(NEW_PASSWORD)
    assert Membership.objects.get(user=carol2).organization == orgs["a1"]
    assert Membership.objects.get(user=carol2).role == "customer"
    invitation = Invitation.objects.get()
    assert invitation.accepted_at is not None and invitation.accepted_by == carol2
    assert AuditEvent.objects.filter(action="invitation.accepted", actor=carol2).exists()
    # She is signed in: home sends a customer to the projects.
    assert client.get(reverse("home"))["Location"] == reverse("project_list")

    # A second use, anonymous or signed in, gets the generic 404 page and is a security event.
    again_page = Client().get(path_of(link))
    assert again_page.status_code == 404 and INVALID_TEXT in again_page.content.decode()
    _, again = accept_anonymously(link, "mallory")
    assert again.status_code == 404 and INVALID_TEXT in again.content.decode()
    assert client_for(users["bob"]).post(path_of(link)).status_code == 404
    assert not get_user_model().objects.filter(username="mallory").exists()
    assert not Membership.objects.filter(user=users["bob"], organization=orgs["a1"]).exists()
    events = invalid_events()
    assert len(events) == 3 and all(event.detail == {"reason": "accepted"} for event in events)
    assert all(event.organization == orgs["a1"] for event in events)


@pytest.mark.django_db
def test_it_refuses_expired_revoked_and_unknown_links_alike(users: Any, orgs: dict[str, Any]) -> None:
    alice = client_for(users["alice"])
    expired_link = invite(alice, orgs["a1"], "late@example.com", "customer")
    revoked_link = invite(alice, orgs["a1"], "gone@example.com", "customer")
    Invitation.objects.filter(email="late@example.com").update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked = Invitation.objects.get(email="gone@example.com")
    response = alice.post(reverse("invitation_revoke", args=[orgs["a1"].pk, revoked.pk]))
    assert response.status_code == 302
    revoked.refresh_from_db()
    assert revoked.revoked_at is not None
    assert AuditEvent.objects.filter(action="invitation.revoked", organization=orgs["a1"]).exists()

    unknown_path = reverse("invitation_accept", args=["x" * 43])
    pages = []
    for path in (path_of(expired_link), path_of(revoked_link), unknown_path):
        for method in ("get", "post"):
            response = getattr(Client(), method)(
                path, {"username": "eve", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD}
            )
            assert response.status_code == 404, (path, method)
            pages.append(main_of(response))
    # Nothing in the answer tells expired, revoked and unknown apart.
    assert len(set(pages)) == 1 and INVALID_TEXT in pages[0]
    assert not get_user_model().objects.filter(username="eve").exists()
    reasons = sorted(event.detail["reason"] for event in invalid_events())
    assert reasons == ["expired", "expired", "revoked", "revoked", "unknown", "unknown"]


@pytest.mark.django_db
def test_it_refuses_weak_passwords_and_keeps_the_invitation(users: Any, orgs: dict[str, Any]) -> None:
    link = invite(client_for(users["alice"]), orgs["a1"], "weak@example.com", "customer")
    for password in ("password", "12345678901234", "weak"):
        _, response = accept_anonymously(link, "weakling", password)
        assert response.status_code == 200 and response.context["form"].errors.get("password2"), password
    _, taken = accept_anonymously(link, "Alice")  # user names are unique regardless of case
    assert taken.status_code == 200 and taken.context["form"].errors.get("username")
    assert not get_user_model().objects.filter(username="weakling").exists()
    assert Invitation.objects.get().is_usable
    _, response = accept_anonymously(link, "strong")
    assert response.status_code == 302


@pytest.mark.django_db
def test_it_lets_a_new_customer_see_only_her_organizations_projects(
    users: Any, orgs: dict[str, Any], inventory: dict[str, Any]
) -> None:
    alice = client_for(users["alice"])
    alice.post(reverse("organization_list"), {"name": "Delta Shop", "slug": "delta", "managed_by": orgs["a"].pk})
    delta = Organization.objects.get(slug="delta")
    own = Project.objects.create(organization=delta, name="Webshop", slug="webshop", git_url="/srv/git/w.git")
    link = invite(alice, delta, "carol2@example.com", "customer")
    client, response = accept_anonymously(link, "carol2")
    assert response.status_code == 302

    projects = client.get(reverse("project_list"))
    assert [project.pk for project in projects.context["projects"]] == [own.pk]
    html = projects.content.decode()
    assert "Webshop" in html and "Shop</a>" not in html and "Erp" not in html
    assert 'href="/servers/"' not in html and 'href="/organizations/"' not in html
    assert client.get(reverse("project_detail", args=[own.pk])).status_code == 200
    assert client.get(reverse("project_detail", args=[inventory["project_a"].pk])).status_code == 404
    assert client.get(reverse("server_detail", args=[inventory["server_a"].pk])).status_code == 404
    assert client.get(reverse("organization_members", args=[delta.pk])).status_code == 404
    api = client.get("/api/v1/projects/").json()
    assert [item["id"] for item in api["results"]] == [own.pk]


@pytest.mark.django_db
def test_it_hides_member_management_from_everyone_but_owners(users: Any, orgs: dict[str, Any]) -> None:
    invitation, _ = services.create_invitation(
        actor=users["alice"], organization=orgs["a1"], email="x@example.com", role="customer"
    )
    carol_membership = Membership.objects.get(user=users["carol"])
    alice_membership = Membership.objects.get(user=users["alice"])
    for organization in (orgs["a"], orgs["a1"]):
        membership = alice_membership if organization == orgs["a"] else carol_membership
        requests = [
            ("get", reverse("organization_members", args=[organization.pk]), {}),
            ("post", reverse("invitation_create", args=[organization.pk]), {"email": "e@x.io", "role": "owner"}),
            ("post", reverse("invitation_revoke", args=[organization.pk, invitation.pk]), {}),
            ("post", reverse("member_role", args=[organization.pk, membership.pk]), {"role": "customer"}),
            ("post", reverse("member_remove", args=[organization.pk, membership.pk]), {}),
            ("post", reverse("organization_rename", args=[organization.pk]), {"name": "Owned"}),
        ]
        for username in ("olga", "victor", "carol", "bob"):
            client = client_for(users[username])
            for method, url, data in requests:
                response = getattr(client, method)(url, data)
                assert response.status_code == 404, (username, method, url)
                assert "Alpha" not in main_of(response), (username, url)
    assert Invitation.objects.count() == 1 and Invitation.objects.get().is_usable
    assert Membership.objects.get(pk=carol_membership.pk).role == "customer"
    assert Membership.objects.get(pk=alice_membership.pk).role == "owner"
    assert Organization.objects.filter(name="Owned").count() == 0
    # A's owner administers A and the customer organization A1 it manages.
    alice = client_for(users["alice"])
    assert alice.get(reverse("organization_members", args=[orgs["a"].pk])).status_code == 200
    page = alice.get(reverse("organization_members", args=[orgs["a1"].pk]))
    assert page.status_code == 200 and "carol" in page.content.decode() and "x@example.com" in page.content.decode()
    assert alice.get(reverse("organization_members", args=[orgs["b"].pk])).status_code == 404
    denied = AuditEvent.objects.filter(action="access.denied", actor=users["bob"], organization=orgs["a"])
    assert denied.exists()


@pytest.mark.django_db
def test_it_changes_roles_and_removes_members(users: Any, orgs: dict[str, Any]) -> None:
    alice = client_for(users["alice"])
    victor = Membership.objects.get(user=users["victor"])
    response = alice.post(reverse("member_role", args=[orgs["a"].pk, victor.pk]), {"role": "operator"})
    assert response.status_code == 302
    victor.refresh_from_db()
    assert victor.role == "operator"
    assert alice.post(reverse("member_role", args=[orgs["a"].pk, victor.pk]), {"role": "god"}).status_code == 302
    victor.refresh_from_db()
    assert victor.role == "operator"
    carol = Membership.objects.get(user=users["carol"])
    # A membership is reached through its own organization only.
    assert alice.post(reverse("member_remove", args=[orgs["a"].pk, carol.pk])).status_code == 404
    assert alice.post(reverse("member_remove", args=[orgs["a1"].pk, carol.pk])).status_code == 302
    assert not Membership.objects.filter(pk=carol.pk).exists()
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"membership.role_changed", "membership.removed"} <= actions


@pytest.mark.django_db
def test_it_never_removes_or_demotes_the_last_owner(users: Any, orgs: dict[str, Any]) -> None:
    alice = client_for(users["alice"])
    own = Membership.objects.get(user=users["alice"])
    response = alice.post(reverse("member_role", args=[orgs["a"].pk, own.pk]), {"role": "operator"}, follow=True)
    assert "last owner" in response.content.decode()
    alice.post(reverse("member_remove", args=[orgs["a"].pk, own.pk]))
    own.refresh_from_db()
    assert own.role == "owner"
    with pytest.raises(LastOwner):
        services.remove_member(actor=users["alice"], membership=own)
    with pytest.raises(LastOwner):
        services.change_role(actor=users["alice"], membership=own, role="viewer")

    # With a second owner, alice may step down (and then no longer manages A's members).
    olga = Membership.objects.get(user=users["olga"])
    alice.post(reverse("member_role", args=[orgs["a"].pk, olga.pk]), {"role": "owner"})
    response = alice.post(reverse("member_role", args=[orgs["a"].pk, own.pk]), {"role": "operator"})
    assert response.status_code == 302 and response["Location"] == reverse("organization_list")
    own.refresh_from_db()
    assert own.role == "operator"
    olga_client = client_for(users["olga"])
    olga.refresh_from_db()
    olga_client.post(reverse("member_remove", args=[orgs["a"].pk, olga.pk]))
    assert Membership.objects.filter(pk=olga.pk, role="owner").exists()


@pytest.mark.django_db
def test_it_stores_only_a_hash_of_the_invitation_token(users: Any, orgs: dict[str, Any]) -> None:
    alice = client_for(users["alice"])
    link = invite(alice, orgs["a1"], "hash@example.com", "customer")
    token = link.rstrip("/").rsplit("/", 1)[1]
    assert len(token) >= 40
    assert Invitation.objects.get().token_hash == hashlib.sha256(token.encode()).hexdigest()
    # The page shows it once: the members page afterwards no longer has it.
    assert token not in alice.get(reverse("organization_members", args=[orgs["a1"].pk])).content.decode()
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')
            assert token not in repr(cursor.fetchall()), table
    # Session data is encoded: look inside too.
    for session in Session.objects.all():
        assert token not in repr(session.get_decoded())


@pytest.mark.django_db
def test_it_accepts_into_a_signed_in_account_and_keeps_the_stronger_role(users: Any, orgs: dict[str, Any]) -> None:
    alice = client_for(users["alice"])
    bob = client_for(users["bob"])
    link = invite(alice, orgs["a1"], "bob@example.com", "customer")
    page = bob.get(path_of(link))
    assert page.status_code == 200 and "Join as bob" in page.content.decode()
    assert Invitation.objects.get().is_usable  # looking at the page does not use it
    assert bob.post(path_of(link)).status_code == 302
    assert Membership.objects.get(user=users["bob"], organization=orgs["a1"]).role == "customer"
    # Bob now sees A1's status but still nothing of A.
    assert orgs["a1"] in bob.get(reverse("organization_list")).context["rows"][0].values()

    # Already a stronger member: an invitation never lowers a role, but may raise one.
    victor = client_for(users["victor"])
    assert victor.post(path_of(invite(alice, orgs["a"], "v@example.com", "customer"))).status_code == 302
    assert Membership.objects.get(user=users["victor"]).role == "viewer"
    assert victor.post(path_of(invite(alice, orgs["a"], "v@example.com", "operator"))).status_code == 302
    assert Membership.objects.get(user=users["victor"]).role == "operator"


@pytest.mark.django_db
def test_it_refuses_a_second_accept_through_the_service(users: Any, orgs: dict[str, Any]) -> None:
    invitation, _ = services.create_invitation(
        actor=users["alice"], organization=orgs["a1"], email="twice@example.com", role="customer"
    )
    stale = Invitation.objects.get(pk=invitation.pk)  # loaded before the first accept, as a racing request would
    services.accept_invitation(invitation=invitation, username="first", password=NEW_PASSWORD)
    with pytest.raises(InvitationInvalid):
        services.accept_invitation(invitation=stale, username="second", password=NEW_PASSWORD)
    with pytest.raises(InvitationInvalid):
        services.accept_invitation(invitation=stale, user=users["bob"])
    assert not get_user_model().objects.filter(username="second").exists()
    assert Membership.objects.filter(organization=orgs["a1"]).count() == 2  # carol and first
    assert len(invalid_events()) == 2


@pytest.mark.django_db(transaction=True)
def test_it_lets_exactly_one_of_concurrent_accepts_win(users: Any, orgs: dict[str, Any]) -> None:
    invitation, _ = services.create_invitation(
        actor=users["alice"], organization=orgs["a1"], email="race@example.com", role="customer"
    )
    contenders = 8
    barrier = threading.Barrier(contenders)
    outcomes: list[str] = []
    lock = threading.Lock()

    def contend(number: int) -> None:
        try:
            loaded = Invitation.objects.get(pk=invitation.pk)
            barrier.wait(timeout=10)
            try:
                services.accept_invitation(invitation=loaded, username=f"racer{number}", password=NEW_PASSWORD)
                outcome = "won"
            except InvitationInvalid:
                outcome = "lost"
        except Exception as exc:  # a failure must fail the test, not vanish in the thread
            outcome = f"error: {exc!r}"
        finally:
            connections.close_all()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=contend, args=(number,)) for number in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["lost"] * (contenders - 1) + ["won"], outcomes
    assert get_user_model().objects.filter(username__startswith="racer").count() == 1
    assert Membership.objects.filter(organization=orgs["a1"], user__username__startswith="racer").count() == 1
    assert len(invalid_events()) == contenders - 1


@pytest.mark.django_db
def test_it_manages_invitations_through_the_api(users: Any, orgs: dict[str, Any]) -> None:
    alice = APIClient()
    alice.force_login(users["alice"])
    created = alice.post(
        "/api/v1/invitations/", {"organization": orgs["a1"].pk, "email": "api@example.com", "role": "customer"}
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["status"] == "pending" and body["url"].endswith(f"/invite/{body['token']}/")
    listed = alice.get(f"/api/v1/invitations/?organization={orgs['a1'].pk}").json()
    assert [item["id"] for item in listed["results"]] == [body["id"]]
    assert "token" not in listed["results"][0] and body["token"] not in str(listed)
    members = alice.get(f"/api/v1/organizations/{orgs['a1'].pk}/members/").json()
    assert [(m["username"], m["role"]) for m in members["results"]] == [("carol", "customer")]

    # Not an administrator of the target: unknown to B's owner (400), refused to those who can see it (403).
    for username, code in (("bob", 400), ("olga", 403), ("carol", 403)):
        client = APIClient()
        client.force_login(users[username])
        response = client.post(
            "/api/v1/invitations/", {"organization": orgs["a1"].pk, "email": "e@example.com", "role": "owner"}
        )
        assert response.status_code == code, (username, response.json())
        assert client.get(f"/api/v1/invitations/{body['id']}/").status_code == 404
        assert client.delete(f"/api/v1/invitations/{body['id']}/").status_code == 404
        assert client.get(f"/api/v1/organizations/{orgs['a1'].pk}/members/").status_code == 404
    # A token cannot create accounts, not even the owner's write token.
    _, plain = create_token(user=users["alice"], name="ci", scope="write")
    bearer = APIClient()
    bearer.credentials(HTTP_AUTHORIZATION=f"Bearer {plain}")
    refused = bearer.post(
        "/api/v1/invitations/", {"organization": orgs["a1"].pk, "email": "t@example.com", "role": "owner"}
    )
    assert refused.status_code == 403
    assert bearer.get("/api/v1/invitations/").status_code == 200
    assert Invitation.objects.count() == 1

    assert alice.delete(f"/api/v1/invitations/{body['id']}/").status_code == 204
    assert alice.get(f"/api/v1/invitations/{body['id']}/").json()["status"] == "revoked"
    assert Client().get(f"/invite/{body['token']}/").status_code == 404
