"""HTML routes of backups (included from ``panel/urls.py`` through ``panel.extensions``)."""

from django.urls import path

from backups import views, zip_views

urlpatterns = [
    path(
        "environments/<int:environment_id>/import-zip/", zip_views.environment_import_zip, name="environment_import_zip"
    ),
    path(
        "environments/<int:environment_id>/backup-policy/",
        zip_views.organization_backup_policy,
        name="environment_backup_policy",
    ),
    path("environments/<int:environment_id>/backup/", views.environment_backup, name="environment_backup"),
    path(
        "environments/<int:environment_id>/copy-production/",
        views.environment_copy_production,
        name="environment_copy_production",
    ),
    path("backups/<int:backup_id>/restore/", views.backup_restore, name="backup_restore"),
    path("backups/<int:backup_id>/test-restore/", views.backup_test_restore, name="backup_test_restore"),
]
