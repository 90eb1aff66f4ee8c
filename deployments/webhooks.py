"""Git push webhooks: ``POST /hooks/git/<webhook_id>/`` from GitHub or GitLab starts deployments.

Each project has an unguessable ``webhook_id`` (the URL) and a ``webhook_secret`` (encrypted at rest, shown once by
``POST /api/v1/projects/{id}/webhook-secret/``, which rotates it):

- **GitHub** signs the raw body: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``; ``X-GitHub-Event``
  is ``ping`` (answered ``pong``) or ``push`` (``ref`` = ``refs/heads/<branch>``, ``after`` = the new commit).
- **GitLab** sends the secret as ``X-Gitlab-Token``; ``X-Gitlab-Event: Push Hook`` with ``ref`` and
  ``checkout_sha``.

A missing or wrong signature or token answers 403, runs nothing and records a security audit event. Bodies over
``MAX_BODY_BYTES`` answer 413. A valid push deploys, with ``ref=<pushed sha>`` and ``trigger=webhook``, every
environment of the project whose ``git_ref`` is the pushed branch **and** whose ``auto_deploy`` is on (off by
default; production should stay off and be deployed by a person). Other environments are listed as skipped with
the reason. Tags, branch deletions and other events are acknowledged (200) and ignored. The branch name and commit
come from the payload, so they are validated (``validate_git_ref``, a hex sha) before anything runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any
from urllib.parse import parse_qs

from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from deployments.choices import Trigger
from deployments.services import start_deploy
from panel.accounts.services import record
from panel.inventory.models import Environment, Project, new_webhook_secret
from panel.jobs.runner import JobFailed
from panel.jobs.services import TargetBusy
from panel.validators import printable, validate_git_ref

MAX_BODY_BYTES = 1024 * 1024
WEBHOOK_ID_RE = re.compile(r"[0-9a-f]{32}")
SHA_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
BRANCH_PREFIX = "refs/heads/"
GITHUB, GITLAB = "github", "gitlab"


def webhook_path(project: Project) -> str:
    """The path of the project's webhook (``/hooks/git/<webhook_id>/``)."""
    return reverse("git-webhook", args=[project.webhook_id])


def webhook_url(project: Project, request: HttpRequest | None = None) -> str:
    """The URL to give the git host: absolute when a request tells the panel's own address."""
    path = webhook_path(project)
    return request.build_absolute_uri(path) if request is not None else path


@transaction.atomic
def rotate_webhook_secret(*, project: Project, actor: Any) -> str:
    """Replace the project's webhook secret and return the new value (the only time it is shown)."""
    project.webhook_secret = new_webhook_secret()
    project.save(update_fields=["webhook_secret"])
    record(action="project.webhook_secret_rotated", actor=actor, obj=project)
    return str(project.webhook_secret)


def _answer(status: int, detail: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"detail": detail, **extra}, status=status)


def _verify(request: HttpRequest, project: Project, body: bytes) -> tuple[str, str]:
    """``(provider, "")`` when signed with the project's secret, else ``(provider, why)``."""
    secret = str(project.webhook_secret).encode()
    signature = request.headers.get("X-Hub-Signature-256")
    token = request.headers.get("X-Gitlab-Token")
    if signature is not None:
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(expected.encode(), signature.strip().encode("utf-8", "replace"))
        return GITHUB, "" if ok else "bad signature"
    if token is not None:
        ok = hmac.compare_digest(secret, token.encode("utf-8", "replace"))
        return GITLAB, "" if ok else "wrong token"
    provider = GITLAB if "X-Gitlab-Event" in request.headers else GITHUB
    return provider, "missing signature"


def _payload(request: HttpRequest, body: bytes) -> dict[str, Any] | None:
    """The JSON payload (GitHub's form encoding ``payload=<json>`` accepted too); None when unreadable."""
    try:
        if request.content_type == "application/x-www-form-urlencoded":
            text = parse_qs(body.decode())["payload"][0]
        else:
            text = body.decode()
        data = json.loads(text)
    except (UnicodeDecodeError, KeyError, IndexError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _push(payload: dict[str, Any], provider: str) -> tuple[str, str] | str:
    """``(branch, sha)`` of a branch push, or why the push is ignored (tag, deletion)."""
    ref = payload.get("ref")
    sha = payload.get("after") if provider == GITHUB else payload.get("checkout_sha")
    if not isinstance(ref, str) or not ref.startswith(BRANCH_PREFIX):
        return "not a branch push (tags are not deployed)"
    if not sha or not isinstance(sha, str) or set(sha) == {"0"} or payload.get("deleted") is True:
        return "branch deleted"
    return ref.removeprefix(BRANCH_PREFIX), sha


def deploy_push(*, project: Project, branch: str, sha: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deploy ``sha`` to every environment of ``project`` mapped to ``branch`` with auto-deploy on.

    Returns ``(started, skipped)``: ``{"environment", "deployment", "job"}`` and ``{"environment", "reason"[, "job"]}``.
    """
    started: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for environment in Environment.objects.filter(project=project).select_related("project").order_by("name"):
        item: dict[str, Any] = {"environment": environment.pk, "name": environment.name}
        if environment.git_ref != branch:
            skipped.append({**item, "reason": f"tracks {environment.git_ref}, not {branch}"})
            continue
        if not environment.auto_deploy:
            skipped.append({**item, "reason": "auto-deploy is off"})
            continue
        try:
            deployment = start_deploy(environment=environment, actor=None, ref=sha, trigger=Trigger.WEBHOOK)
        except TargetBusy as exc:
            skipped.append({**item, "reason": "busy", "job": exc.job.pk if exc.job else None})
            continue
        except (JobFailed, ValidationError) as exc:
            skipped.append({**item, "reason": str(exc)})
            continue
        started.append({**item, "deployment": deployment.pk, "job": deployment.job_id})
    return started, skipped


@csrf_exempt
@require_POST
def git_webhook(request: HttpRequest, webhook_id: str) -> JsonResponse:
    """Receive a GitHub or GitLab webhook for the project with this ``webhook_id`` (see the module docstring)."""
    project = (
        Project.objects.filter(webhook_id=webhook_id).select_related("organization").first()
        if WEBHOOK_ID_RE.fullmatch(webhook_id)
        else None
    )
    if project is None:
        return _answer(404, "Not found.")
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        return _answer(400, "Bad Content-Length.")
    if length > MAX_BODY_BYTES:
        return _answer(413, f"The body is larger than {MAX_BODY_BYTES} bytes.")
    body = request.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        return _answer(413, f"The body is larger than {MAX_BODY_BYTES} bytes.")

    provider, problem = _verify(request, project, body)
    if problem:
        record(
            action="webhook.rejected",
            obj=project,
            security=True,
            request=request,
            actor_name=f"{provider} webhook",
            detail={"provider": provider, "reason": problem},
        )
        return _answer(403, "The webhook signature or token is missing or wrong.")

    event = request.headers.get("X-GitHub-Event" if provider == GITHUB else "X-Gitlab-Event", "")
    if provider == GITHUB and event == "ping":
        return _answer(200, "pong")
    if event not in ("push", "Push Hook"):
        return _answer(200, f"Ignored: only push events deploy (got {event[:40]!r}).")
    payload = _payload(request, body)
    if payload is None:
        return _answer(400, "The body is not a JSON object; set the webhook's content type to application/json.")
    push = _push(payload, provider)
    if isinstance(push, str):
        return _answer(200, f"Ignored: {push}.")
    branch, sha = push
    try:
        validate_git_ref(branch)
    except ValidationError:
        record(
            action="webhook.refused_branch",
            obj=project,
            security=True,
            request=request,
            actor_name=f"{provider} webhook",
            detail={"provider": provider, "branch": printable(branch[:200])},
        )
        return _answer(400, "Refused: the pushed branch name is not allowed.")
    if not SHA_RE.fullmatch(sha):
        return _answer(400, "Refused: the pushed commit is not a commit sha.")

    started, skipped = deploy_push(project=project, branch=branch, sha=sha)
    record(
        action="webhook.push",
        obj=project,
        request=request,
        actor_name=f"{provider} webhook",
        detail={"provider": provider, "branch": branch, "commit": sha, "started": [s["job"] for s in started]},
    )
    return _answer(
        202 if started else 200,
        f"Started {len(started)} deployment(s) of {sha[:12]} ({branch}).",
        branch=branch,
        commit=sha,
        started=started,
        skipped=skipped,
    )
