"""Inviting a customer in a real browser: create the customer organization, invite, open the link elsewhere, join."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

# Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run in one unless told.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

from playwright.sync_api import Browser, Page

from tests.conftest import PASSWORD

NEW_PASSWORD = "violet umbrella canoe 8181"


@pytest.fixture
def alice(transactional_db: Any, make_user: Any) -> Any:
    from panel.accounts.models import Organization

    organization = Organization.objects.create(name="Alpha Hosting", slug="alpha")
    return make_user("alice", organization, "owner")


def watch_problems(page: Page) -> list[str]:
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    return problems


@pytest.mark.browser
def test_it_invites_a_customer_who_joins_from_another_browser(
    live_server_url: str, alice: Any, browser: Browser
) -> None:
    """``browser`` (tests/conftest.py) is headless Debian Chromium; it closes the ORM connections of the test."""
    from panel.accounts.models import Invitation, Membership

    owner_context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = owner_context.new_page()
    problems = watch_problems(page)
    page.goto(f"{live_server_url}/login/")
    page.locator("#id_username").fill("alice")
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server_url}/dashboard/")

    # Create the customer organization.
    page.get_by_role("link", name="Organizations").click()
    page.wait_for_url(f"{live_server_url}/organizations/")
    page.locator("#id_name").fill("Carol Shop")
    page.locator("#id_slug").fill("carol-shop")
    page.get_by_role("button", name="Create organization").click()
    page.wait_for_url(re.compile(r"/organizations/\d+/members/$"))
    assert page.get_by_role("heading", name="Carol Shop").is_visible()
    members_url = page.url

    # Invite a customer (the default role in a customer organization) and copy the link shown once.
    page.locator("#id_email").fill("carol2@example.com")
    assert page.locator("#id_role").input_value() == "customer"
    page.get_by_role("button", name="Create invitation link").click()
    link = page.get_by_test_id("invite-link").inner_text().strip()
    assert re.fullmatch(rf"{re.escape(live_server_url)}/invite/[A-Za-z0-9_-]{{40,}}/", link), link
    assert page.get_by_test_id("invitation-row").count() == 1
    page.screenshot(path="/tmp/panel-members-invite.png", full_page=True)

    # The customer opens it in a browser of their own, chooses a name and a password.
    customer_context = browser.new_context(viewport={"width": 1280, "height": 900})
    customer = customer_context.new_page()
    customer_problems = watch_problems(customer)
    customer.goto(link)
    assert customer.get_by_text("Carol Shop").first.is_visible()
    customer.locator("#id_username").fill("carol2")
    customer.locator("#id_password1").fill(NEW_PASSWORD)
    customer.locator("#id_password2").fill(NEW_PASSWORD)
    customer.screenshot(path="/tmp/panel-members-accept.png", full_page=True)
    customer.get_by_role("button", name="Create account and join").click()
    customer.wait_for_url(f"{live_server_url}/projects/")
    nav = customer.get_by_role("navigation", name="Main")
    assert nav.get_by_text("carol2").is_visible()
    assert nav.get_by_role("link", name="Projects").is_visible()
    assert nav.get_by_role("link", name="Servers").count() == 0
    assert nav.get_by_role("link", name="Organizations").count() == 0
    assert customer.get_by_text("Welcome to Carol Shop").is_visible()
    customer.screenshot(path="/tmp/panel-members-customer-home.png", full_page=True)
    membership = Membership.objects.get(user__username="carol2")
    assert (membership.organization.slug, membership.role) == ("carol-shop", "customer")

    # The link does not work a second time.
    other = browser.new_context().new_page()
    response = other.goto(link)
    assert response is not None and response.status == 404
    assert other.get_by_text("This invitation link is not valid").is_visible()
    other.screenshot(path="/tmp/panel-members-used-link.png", full_page=True)

    # The owner sees the member and the accepted invitation (a GET: reloading the POST would invite again).
    page.goto(members_url)
    assert page.get_by_test_id("member-row").filter(has_text="carol2").count() == 1
    assert Invitation.objects.get().accepted_by == membership.user
    csp = [p for p in problems + customer_problems if "Content Security Policy" in p or "Refused" in p]
    assert not csp, csp
