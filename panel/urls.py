"""URL configuration: HTML views, the API under /api/v1/, OpenAPI schema and docs.

Feature apps add their HTML routes (deployments: its pages and the git webhooks) through ``panel.extensions``.
"""

from django.urls import include, path

from panel import extensions

urlpatterns = [
    path("", include("panel.accounts.urls")),
    path("", include("panel.inventory.urls")),
    path("", include("panel.jobs.urls")),
    *(path("", include(module)) for module in extensions.html_urls()),
    path("api/v1/", include("panel.api_urls")),
]
