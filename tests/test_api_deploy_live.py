"""Twenty deploy requests at once against the real ASGI server: exactly one is accepted, the others name its job.

The one-job-per-environment rule is the database's (a partial unique index on queued/running jobs), so it holds
however the requests interleave. No worker runs: the accepted job stays queued.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from deployments.models import Deployment
from panel.accounts.services import create_token
from panel.jobs.models import Job
from tests.deploy_fixtures import api_call

pytestmark = pytest.mark.django_db(transaction=True)

REQUESTS = 20


def test_it_accepts_exactly_one_of_twenty_concurrent_deploys(live_server_url: str, users: Any, inventory: Any) -> None:
    environment = inventory["env_a"]
    _, token = create_token(user=users["olga"], name="burst", scope="write")
    path = f"/api/v1/environments/{environment.pk}/deploy/"
    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        results = list(pool.map(lambda _: api_call(live_server_url, token, "POST", path), range(REQUESTS)))
    codes = sorted(code for code, _ in results)
    assert codes == [202] + [409] * (REQUESTS - 1), results
    accepted = next(body for code, body in results if code == 202)
    job_id = accepted["job"]["id"]
    assert all(body["job"] == job_id for code, body in results if code == 409), results
    active = Job.objects.filter(environment=environment, status__in=["queued", "running"])
    assert list(active.values_list("pk", flat=True)) == [job_id]
    assert Job.objects.filter(environment=environment).count() == 1
    assert list(Deployment.objects.filter(environment=environment).values_list("job_id", flat=True)) == [job_id]
