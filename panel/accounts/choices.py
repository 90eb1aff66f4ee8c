"""Roles and the actions each role may take."""

from django.db import models


class Role(models.TextChoices):
    """What a member of an organization may do."""

    OWNER = "owner", "Owner"
    OPERATOR = "operator", "Operator"
    VIEWER = "viewer", "Viewer"
    CUSTOMER = "customer", "Customer"


class Action(models.TextChoices):
    """What a request wants to do with an object; the scoping helper checks it against the role."""

    VIEW = "view", "See status"
    VIEW_DETAILS = "view_details", "See details, logs and servers"
    CHANGE = "change", "Create, change, run jobs"
    ADMIN = "admin", "Manage members, read the audit log"


ROLE_ACTIONS: dict[str, frozenset[str]] = {
    Role.OWNER: frozenset({Action.VIEW, Action.VIEW_DETAILS, Action.CHANGE, Action.ADMIN}),
    Role.OPERATOR: frozenset({Action.VIEW, Action.VIEW_DETAILS, Action.CHANGE}),
    Role.VIEWER: frozenset({Action.VIEW, Action.VIEW_DETAILS}),
    Role.CUSTOMER: frozenset({Action.VIEW}),
}

# Staff roles of a provider organization also act on the organizations it manages.
STAFF_ROLES = frozenset({Role.OWNER, Role.OPERATOR, Role.VIEWER})


class TokenScope(models.TextChoices):
    """What an API token may do (never more than its user's role allows)."""

    READ = "read", "Read only"
    WRITE = "write", "Read and write"
