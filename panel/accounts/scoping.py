"""The one way any view, API view or websocket consumer reaches a tenant's objects.

``for_user(Model, user, action)`` returns only the objects of organizations where the user's role allows
``action``. Objects outside that set do not exist for the caller: views answer 404, never 403 with details.
Each scoped model names the path to its organization (``scope_organization``) and may demand more than
``view`` just to be seen (``scope_min_action``; servers are invisible to customers).
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.db import models
from django.db.models import QuerySet
from django.http import Http404

from panel.accounts.choices import ROLE_ACTIONS, STAFF_ROLES, Action
from panel.accounts.models import Membership, Organization

M = TypeVar("M", bound=models.Model)

ACTION_RANK = {Action.VIEW: 0, Action.VIEW_DETAILS: 1, Action.CHANGE: 2, Action.ADMIN: 3}


def organization_ids(user: Any, action: str) -> frozenset[int]:
    """Ids of the organizations in which ``user`` may take ``action`` (direct or through a provider)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return frozenset()
    cache: dict[str, frozenset[int]] = user.__dict__.setdefault("_panel_org_ids", {})
    if action in cache:
        return cache[action]
    ids: set[int] = set()
    staff_orgs: set[int] = set()
    for membership in Membership.objects.filter(user=user).only("organization_id", "role"):
        if action in ROLE_ACTIONS[membership.role]:
            ids.add(membership.organization_id)
            if membership.role in STAFF_ROLES:
                staff_orgs.add(membership.organization_id)
    frontier = staff_orgs
    while frontier:
        children = set(
            Organization.objects.filter(managed_by_id__in=frontier).exclude(id__in=ids).values_list("id", flat=True)
        )
        ids |= children
        frontier = children
    cache[action] = frozenset(ids)
    return cache[action]


def strongest_action(*actions: str) -> str:
    """The most demanding of several actions."""
    return max(actions, key=lambda action: ACTION_RANK[Action(action)])


def for_user(model_or_queryset: type[M] | QuerySet[M], user: Any, action: str = Action.VIEW) -> QuerySet[M]:
    """Restrict a model or queryset to what ``user`` may ``action``."""
    if isinstance(model_or_queryset, QuerySet):
        queryset = model_or_queryset
    else:
        queryset = model_or_queryset._default_manager.all()
    model = queryset.model
    path: str = model.scope_organization  # type: ignore[attr-defined]
    action = strongest_action(action, getattr(model, "scope_min_action", Action.VIEW))
    ids = organization_ids(user, action)
    if model is Organization:
        return queryset.filter(pk__in=ids)
    return queryset.filter(**{f"{path}__in": ids})


def get_for_user(model_or_queryset: type[M] | QuerySet[M], user: Any, action: str = Action.VIEW, **lookup: Any) -> M:
    """One object the user may ``action``, or ``Http404`` (the same answer as for an object that does not exist).

    When the object exists but is out of the user's reach, a security event records the denied access.
    """
    try:
        return for_user(model_or_queryset, user, action).get(**lookup)
    except (models.ObjectDoesNotExist, ValueError, TypeError) as exc:
        record_denied(model_or_queryset, user, action, lookup)
        raise Http404("Not found.") from exc


def record_denied(model_or_queryset: Any, user: Any, action: str, lookup: dict[str, Any]) -> None:
    """Audit an attempt to reach an existing object outside the user's organizations or role."""
    from panel.accounts.services import record

    model = model_or_queryset.model if isinstance(model_or_queryset, QuerySet) else model_or_queryset
    try:
        target = model._default_manager.filter(**lookup).first()
    except (ValueError, TypeError):
        return
    if target is None:
        return
    record(
        action="access.denied",
        actor=user,
        obj=target,
        security=True,
        detail={"object": model._meta.model_name, "id": str(target.pk), "wanted": action},
    )


def can(user: Any, action: str, obj: models.Model) -> bool:
    """Whether ``user`` may take ``action`` on ``obj``."""
    return for_user(type(obj), user, action).filter(pk=obj.pk).exists()


def role_in(user: Any, organization: Organization) -> str | None:
    """The user's effective role in an organization (a provider's staff role carries to managed organizations)."""
    if not user.is_authenticated:
        return None
    for action, role in ((Action.ADMIN, "owner"), (Action.CHANGE, "operator"), (Action.VIEW_DETAILS, "viewer")):
        if organization.pk in organization_ids(user, action):
            return role
    if organization.pk in organization_ids(user, Action.VIEW):
        return "customer"
    return None
