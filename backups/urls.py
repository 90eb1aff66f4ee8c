"""HTML routes of backups (included from ``panel/urls.py`` through ``panel.extensions``)."""

from django.urls import path

from backups import views

urlpatterns = [
    path("environments/<int:environment_id>/backup/", views.environment_backup, name="environment_backup"),
    path(
        "environments/<int:environment_id>/copy-production/",
        views.environment_copy_production,
        name="environment_copy_production",
    ),
    path("backups/<int:backup_id>/restore/", views.backup_restore, name="backup_restore"),
]
