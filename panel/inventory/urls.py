"""HTML routes of servers, projects and environments."""

from django.urls import path

from panel.inventory import views

urlpatterns = [
    path("servers/", views.server_list, name="server_list"),
    path("servers/new/", views.server_create, name="server_create"),
    path("servers/<int:server_id>/", views.server_detail, name="server_detail"),
    path("servers/<int:server_id>/facts/", views.server_facts, name="server_facts"),
    path("servers/<int:server_id>/confirm/", views.server_confirm, name="server_confirm"),
    path("servers/<int:server_id>/validate/", views.server_validate, name="server_validate"),
    path("servers/<int:server_id>/proxy/", views.server_proxy, name="server_proxy"),
    path("servers/<int:server_id>/prepare/", views.server_prepare, name="server_prepare"),
    path("servers/<int:server_id>/host-key/", views.server_refetch_host_key, name="server_refetch_host_key"),
    path("servers/<int:server_id>/edit/", views.server_edit, name="server_edit"),
    path("servers/<int:server_id>/delete/", views.server_delete, name="server_delete"),
    path("projects/", views.project_list, name="project_list"),
    path("projects/new/", views.project_create, name="project_create"),
    path("projects/<int:project_id>/", views.project_detail, name="project_detail"),
    path("projects/<int:project_id>/edit/", views.project_edit, name="project_edit"),
    path("projects/<int:project_id>/delete/", views.project_delete, name="project_delete"),
    path("projects/<int:project_id>/environments/new/", views.environment_create, name="environment_create"),
    path("environments/<int:environment_id>/", views.environment_detail, name="environment_detail"),
    path("environments/<int:environment_id>/edit/", views.environment_edit, name="environment_edit"),
    path("environments/<int:environment_id>/delete/", views.environment_delete, name="environment_delete"),
]
