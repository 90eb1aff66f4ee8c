"""HTML routes of jobs."""

from django.urls import path

from panel.jobs import views

urlpatterns = [
    path("jobs/", views.job_list, name="job_list"),
    path("jobs/<int:job_id>/", views.job_detail, name="job_detail"),
    path("jobs/<int:job_id>/log.txt", views.job_log_download, name="job_log_download"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job_cancel"),
]
