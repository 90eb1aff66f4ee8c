"""Template context: the organizations a user belongs to and the current one (the switcher)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from panel.accounts.choices import Action
from panel.accounts.models import Membership, Organization
from panel.accounts.scoping import for_user, role_in

SESSION_KEY = "panel_organization_id"


def current_organization(request: HttpRequest) -> Organization | None:
    """The organization chosen in the switcher, or the first one the user can see."""
    if not request.user.is_authenticated:
        return None
    cached = getattr(request, "_panel_current_org", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    visible = for_user(Organization, request.user, Action.VIEW)
    chosen_id = request.session.get(SESSION_KEY)
    chosen = visible.filter(pk=int(chosen_id)).first() if chosen_id else None
    if chosen is None:
        # Start where the user is a direct member (a provider's staff start in the provider, not in a customer).
        direct = visible.filter(memberships__user=request.user).order_by("memberships__created_at", "pk")
        chosen = direct.first() or visible.first()
    request._panel_current_org = chosen  # type: ignore[attr-defined]
    return chosen


def start_in_organization(request: HttpRequest, user: Any) -> None:
    """After a login: start in an organization the user is a direct member of (not a managed customer's)."""
    membership = Membership.objects.filter(user=user).order_by("organization__name").first()
    if membership is not None:
        request.session[SESSION_KEY] = membership.organization_id


def organizations(request: HttpRequest) -> dict[str, Any]:
    """Context processor for the base layout."""
    if not request.user.is_authenticated:
        return {}
    organization = current_organization(request)
    role = role_in(request.user, organization) if organization else None
    return {
        "organizations": for_user(Organization, request.user, Action.VIEW),
        "current_organization": organization,
        "current_role": role,
        "is_staff_role": role in ("owner", "operator", "viewer"),
        "can_change": role in ("owner", "operator"),
        "is_owner": role == "owner",
    }
