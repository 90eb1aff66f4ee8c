"""URL configuration: HTML views, the API under /api/v1/, OpenAPI schema and docs, git webhooks."""

from django.urls import include, path

from deployments.webhooks import git_webhook

urlpatterns = [
    path("", include("panel.accounts.urls")),
    path("", include("panel.inventory.urls")),
    path("", include("panel.jobs.urls")),
    path("", include("deployments.urls")),
    path("api/v1/", include("panel.api_urls")),
    path("hooks/git/<str:webhook_id>/", git_webhook, name="git-webhook"),
]
