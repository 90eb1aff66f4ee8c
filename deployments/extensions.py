"""What deployments add to the environment and project pages and API (``panel.extensions``), registered in
``DeploymentsConfig.ready()``.

- Environment page: the *Deployment* section (current deployment; deploy, check, promote and cancel buttons), the
  *Lifecycle* buttons (stop, start, restart, destroy) and the deployment history, below the facts. API: ``deploy``,
  ``check``, ``promote``, ``stop``, ``start``, ``restart`` and ``destroy`` actions on
  ``/environments/{id}/``, the ``webhook_url`` field, the ``/deployments/`` collection and the HTML routes of
  ``deployments.urls`` (git webhooks included).
- Project API: the ``webhook_url`` field and ``POST /projects/{id}/webhook-secret/``.
- Project page and API: what the repository's ``.copier-answers.yml`` says, and *Read from the repository*
  (``POST /projects/{id}/read-answers/``).
"""

from __future__ import annotations

import datetime
from typing import Any

from deployments.api.lifecycle import EnvironmentLifecycleActions
from deployments.api.serializers import WebhookUrlField
from deployments.api.views import (
    DeploymentViewSet,
    EnvironmentDeployActions,
    ProjectAnswersActions,
    ProjectWebhookActions,
)
from deployments.views import environment_context, lifecycle_context
from panel.extensions import Contribution, Page
from panel.inventory.views import servers_for


class EnvironmentDeployments(Contribution):
    """The deployment section, actions and routes of an environment, and its lifecycle (stop, start, restart,
    destroy: ``deployments.lifecycle``, whose job handlers this import registers)."""

    name = "deployments"
    model = "environment"
    order = 100
    templates = {"sections": "deployments/_environment_section.html"}
    viewset_mixins = (EnvironmentDeployActions, EnvironmentLifecycleActions)
    api_routes = (("deployments", DeploymentViewSet, "deployment"),)
    html_urls = "deployments.urls"

    def context(self, page: Page) -> dict[str, Any]:
        context = environment_context(
            page.request, page.obj, show_details=page.show_details, may_change=page.may_change
        )
        context.update(lifecycle_context(page.obj, may_change=page.may_change and page.show_details))
        return context

    def serializer_fields(self) -> dict[str, Any]:
        return {
            "webhook_url": WebhookUrlField(
                project_of=lambda environment: environment.project,
                help_text="The project's git webhook URL (pushes to ``git_ref`` deploy here when ``auto_deploy`` "
                "is on).",
            )
        }


class ProjectWebhooks(Contribution):
    """A project's git webhook: its URL in the representation and the secret rotation."""

    name = "deployments.webhooks"
    model = "project"
    order = 100
    viewset_mixins = (ProjectWebhookActions,)

    def serializer_fields(self) -> dict[str, Any]:
        return {
            "webhook_url": WebhookUrlField(
                project_of=lambda project: project,
                help_text="Where the git host sends push events (``/hooks/git/<webhook_id>/``).",
            )
        }


class ProjectAnswers(Contribution):
    """What the project's ``.copier-answers.yml`` says, and the job that reads it."""

    name = "deployments.answers"
    model = "project"
    order = 110
    templates = {"sections": "deployments/_project_answers.html"}
    viewset_mixins = (ProjectAnswersActions,)

    def context(self, page: Page) -> dict[str, Any]:
        read_at = (page.obj.copier_answers or {}).get("read_at")
        try:
            when = datetime.datetime.fromisoformat(read_at) if isinstance(read_at, str) else None
        except ValueError:
            when = None
        servers = servers_for(page.request, page.obj) if page.may_change and page.show_details else []
        return {"answers_read_at": when, "answer_servers": servers}
