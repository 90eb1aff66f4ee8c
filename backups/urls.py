"""HTML routes of backups (included from ``panel/urls.py`` through ``panel.extensions``)."""

from django.urls import path

from backups import views

urlpatterns = [
    path("environments/<int:environment_id>/backup/", views.environment_backup, name="environment_backup"),
]
