"""Schemathesis against the panel's own OpenAPI schema: every operation, with an owner's write token, no 5xx.

The panel is served by uvicorn (``live_server_url``) on the real PostgreSQL test database. Generated ids are
mapped half of the time onto objects that exist (an organization, server, project, environment, deployments,
jobs, a token, an invitation), so operations act on data and not only answer 404. Actions that start jobs queue
them (no worker needed) or answer 409. Every answer must be no server error, have a status code and content type
the schema declares, and a body that conforms to the schema.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from django.utils import timezone
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from deployments.models import Deployment
from panel.accounts.choices import TokenScope
from panel.accounts.services import create_invitation, create_token
from panel.jobs.models import Job, JobLogLine

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = 25  # per operation and generation mode: about a minute and a half for the whole schema
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# The Odoo zip import takes the zip itself as its body (backups.zip_api): arbitrary bytes, some that start like one.
schemathesis.openapi.media_type(
    "application/zip",
    st.one_of(st.binary(max_size=2048), st.binary(max_size=2048).map(lambda data: b"PK\x03\x04" + data)),
)
# Destructive operations run last, in an order that lets each act on something that still exists.
LAST = ["DELETE /api/v1/tokens/{id}/", "DELETE /api/v1/invitations/{id}/", "DELETE /api/v1/servers/{id}/",
        "DELETE /api/v1/environments/{id}/", "DELETE /api/v1/projects/{id}/"]  # fmt: skip


def finished_job(environment: Any, user: Any | None, lines: int = 3) -> Job:
    now = timezone.now()
    job = Job.objects.create(
        organization=environment.project.organization, kind="deploy", status="succeeded", environment=environment,
        created_by=user, started_at=now, finished_at=now, last_seq=lines,
    )  # fmt: skip
    JobLogLine.objects.bulk_create(JobLogLine(job=job, seq=seq, text=f"line {seq}") for seq in range(1, lines + 1))
    return job


@pytest.fixture
def api_data(inventory: dict[str, Any], users: dict[str, Any], orgs: dict[str, Any]) -> dict[str, Any]:
    """What the generated requests act on, as ids per path prefix and per body or query field."""
    alice = users["alice"]
    environment = inventory["env_a"]
    deployments = []
    # The second as a webhook push makes it: nobody triggered it (null in the API).
    for commit, user in (("a" * 40, alice), ("b" * 40, None)):
        deployments.append(
            Deployment.objects.create(
                environment=environment,
                job=finished_job(environment, user),
                status="succeeded",
                ref="main",
                commit=commit,
                triggered_by=user,
                trigger="api" if user else "webhook",
                finished_at=timezone.now(),
            )
        )
    environment.current_deployment = deployments[-1]
    environment.save(update_fields=["current_deployment"])
    jobs = [deployment.job_id for deployment in deployments]
    spare_token, _ = create_token(user=alice, name="to revoke", scope=TokenScope.READ)
    invitation, _ = create_invitation(actor=alice, organization=orgs["a"], email="new@example.com", role="viewer")
    _, token = create_token(user=alice, name="schemathesis", scope=TokenScope.WRITE)
    # A backup storage (under the live server's BACKUP_LOCAL_ROOTS) with a good backup and its objects in it.
    from django.conf import settings

    from backups.models import BackupSettings
    from tests.backup_fixtures import make_local_storage
    from tests.backup_rows import make_backup

    root = Path(settings.BACKUP_LOCAL_ROOTS[0]) / f"fuzz-{os.getpid()}-{time.monotonic_ns()}"
    root.mkdir(parents=True)
    storage = make_local_storage(environment.project.organization, root)
    BackupSettings.objects.create(environment=environment, storage=storage)
    backup = make_backup(environment, storage, files=[b"a filestore file\n"])
    ids = {
        "organizations": [orgs["a"].pk, orgs["a1"].pk],
        "servers": [inventory["server_a"].pk],
        "projects": [inventory["project_a"].pk],
        "environments": [environment.pk],
        "deployments": [deployment.pk for deployment in deployments],
        "jobs": jobs,
        "tokens": [spare_token.pk],
        "invitations": [invitation.pk],
        "backups": [backup.pk],
        "backup-storages": [storage.pk],
        "backup-policies": [orgs["a1"].pk],
    }
    fields = {
        "organization": ids["organizations"],
        "server": ids["servers"],
        "project": ids["projects"],
        "environment": ids["environments"],
        "backup": ids["backups"],
        "storage": ids["backup-storages"],
        "with": ids["deployments"],
    }
    return {"token": token, "ids": ids, "fields": fields}


def existing(value: Any, choices: list[int]) -> Any:
    """Half of the generated integers become an id that exists (chosen by the value, so Hypothesis stays in
    control of the example); everything else is sent as generated."""
    if isinstance(value, int) and not isinstance(value, bool) and value % 2 == 0:
        return choices[(value // 2) % len(choices)]
    return value


def install_hooks(schema: Any, data: dict[str, Any]) -> None:
    @schema.hook("map_path_parameters")
    def _path(context: Any, path_parameters: dict[str, Any]) -> dict[str, Any]:
        prefix = context.operation.path.removeprefix("/api/v1/").split("/")[0]
        if isinstance(path_parameters, dict) and "id" in path_parameters and prefix in data["ids"]:
            path_parameters["id"] = existing(path_parameters["id"], data["ids"][prefix])
        return path_parameters

    def _fields(values: Any) -> Any:
        if isinstance(values, dict):
            for name, choices in data["fields"].items():
                if name in values:
                    values[name] = existing(values[name], choices)
        return values

    schema.hook("map_query")(lambda context, query: _fields(query))
    schema.hook("map_body")(lambda context, body: _fields(body))


def run_operation(operation: Any, mode: Any, base_url: str, headers: dict[str, str]) -> list[str]:
    """Up to ``EXAMPLES`` cases of one operation; the failures found, as curl commands with what failed."""
    failures: list[str] = []

    @given(operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        try:
            case.validate_response(response, checks=CHECKS)
        except (Exception, BaseExceptionGroup) as exc:  # reported at the end: every operation runs
            failures.append(f"{case.as_curl_command()}\n  -> {response.status_code}: {str(exc)[:1500]}")

    check()
    return failures


def test_it_answers_every_operation_without_a_server_error(live_server_url: str, api_data: dict[str, Any]) -> None:
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{live_server_url}/api/v1/schema/?format=json")
    install_hooks(schema, api_data)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = [operation.label for operation in operations]
    assert len(operations) >= 35 and all(label in labels for label in LAST), labels
    operations.sort(key=lambda operation: LAST.index(operation.label) if operation.label in LAST else -1)
    headers = {"Authorization": f"Bearer {api_data['token']}"}
    failures: dict[str, list[str]] = {}
    run: Callable[..., list[str]] = run_operation
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            found = run(operation, mode, live_server_url, headers)
            if found:
                failures[f"{operation.label} ({mode.value})"] = found[:3]
    report = "\n\n".join(f"{label}:\n" + "\n".join(found) for label, found in failures.items())
    assert not failures, report
    # Bounded well inside the 600 s test timeout, with room for a busy machine (CI runs two test processes).
    assert time.monotonic() - started < 420, "keep the fuzzing bounded"
