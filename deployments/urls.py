"""HTML routes of deployments and the git webhook (included from ``panel/urls.py`` through ``panel.extensions``)."""

from django.urls import path

from deployments import views
from deployments.webhooks import git_webhook

urlpatterns = [
    path("environments/<int:environment_id>/deploy/", views.environment_deploy, name="environment_deploy"),
    path("environments/<int:environment_id>/promote/", views.environment_promote, name="environment_promote"),
    path("environments/<int:environment_id>/check/", views.environment_check, name="environment_check"),
    path(
        "environments/<int:environment_id>/stop/",
        views.environment_lifecycle,
        {"action": "stop"},
        name="environment_stop",
    ),
    path(
        "environments/<int:environment_id>/start/",
        views.environment_lifecycle,
        {"action": "start"},
        name="environment_start",
    ),
    path(
        "environments/<int:environment_id>/restart/",
        views.environment_lifecycle,
        {"action": "restart"},
        name="environment_restart",
    ),
    path(
        "environments/<int:environment_id>/destroy/",
        views.environment_lifecycle,
        {"action": "destroy"},
        name="environment_destroy",
    ),
    path("environments/<int:environment_id>/compare/", views.environment_compare, name="environment_compare"),
    path("deployments/<int:deployment_id>/", views.deployment_detail, name="deployment_detail"),
    path("deployments/<int:deployment_id>/rollback/", views.deployment_rollback, name="deployment_rollback"),
    path("projects/<int:project_id>/read-answers/", views.project_read_answers, name="project_read_answers"),
    path("hooks/git/<str:webhook_id>/", git_webhook, name="git-webhook"),
]
