"""Which deploys dump the database before the update (DEPLOY_DB_SNAPSHOT)."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.services import wants_db_snapshot

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("policy", "kind", "expected"),
    [
        ("production", "production", True),
        ("production", "staging", False),
        ("always", "staging", True),
        ("never", "production", False),
    ],
)
def test_the_snapshot_policy_follows_the_environment_kind(
    settings: Any, inventory: Any, policy: str, kind: str, expected: bool
) -> None:
    settings.DEPLOY_DB_SNAPSHOT = policy
    environment = inventory["env_a"]
    environment.kind = kind
    assert wants_db_snapshot(environment) is expected
