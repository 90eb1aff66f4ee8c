"""HTML routes of status pages and Prometheus' ``/metrics`` (included at the root through ``monitoring.extensions``)."""

from django.urls import path

from monitoring import metrics, status_views

urlpatterns = [
    path("status/", status_views.status_index, name="status_index"),
    path("status/<int:organization_id>/", status_views.status_page, name="status_page"),
    path("status/<int:organization_id>/settings/", status_views.status_settings, name="status_settings"),
    path("status/<int:organization_id>/public-link/", status_views.status_public_link, name="status_public_link"),
    path(
        "status/<int:organization_id>/public-link/revoke/",
        status_views.status_public_revoke,
        name="status_public_revoke",
    ),
    path("status/p/<str:token>/", status_views.status_public, name="status_public"),
    path("metrics", metrics.metrics_view, name="metrics"),
]
