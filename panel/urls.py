"""URL configuration: HTML views, the API under /api/v1/, OpenAPI schema and docs."""

from django.urls import include, path

urlpatterns = [
    path("", include("panel.accounts.urls")),
    path("", include("panel.inventory.urls")),
    path("", include("panel.jobs.urls")),
    path("api/v1/", include("panel.api_urls")),
]
