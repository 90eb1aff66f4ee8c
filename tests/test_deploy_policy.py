"""Which deploys dump the database before the update (DEPLOY_DB_SNAPSHOT), and what a deploy with nothing to roll back to says."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from deployments.models import Deployment
from deployments.services import _recover, wants_db_snapshot
from panel.jobs.models import Job
from panel.jobs.runner import JobCanceled, JobFailed

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


STEPS_DONE = [{"name": "Fetch code", "status": "succeeded"}, {"name": "Write configuration", "status": "succeeded"}]


@pytest.mark.parametrize(
    ("kind", "canceled", "reason"),
    [
        ("deploy", True, "Canceled. There was no earlier successful deployment to restore."),
        ("deploy", False, "Step “Write configuration” failed: boom There was no earlier successful deployment"),
        ("rollback", False, "failed: boom A rollback is not rolled back in turn: check the environment"),
    ],
)
def test_a_deploy_with_nothing_to_roll_back_to_says_so_in_one_sentence(
    inventory: Any, kind: str, canceled: bool, reason: str
) -> None:

    environment = inventory["env_a"]
    job = Job.objects.create(kind=kind, organization=environment.project.organization, environment=environment)
    deployment = Deployment.objects.create(environment=environment, job=job, kind=kind, ref="main", commit="a" * 40)
    steps = [dict(step) for step in STEPS_DONE]
    if not canceled:
        steps[-1]["status"] = "failed"
    context = SimpleNamespace(steps=steps, write=lambda text: None, job=job)
    error = JobCanceled("Canceled.") if canceled else JobFailed("boom")
    with pytest.raises(JobCanceled if canceled else JobFailed) as raised:
        _recover(context, None, deployment, None, error)  # type: ignore[arg-type]
    assert reason in str(raised.value)
    assert ".;" not in str(raised.value)
    deployment.refresh_from_db()
    assert deployment.status == ("canceled" if canceled else "failed_no_rollback")
