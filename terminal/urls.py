"""The terminal's HTML routes (included at the root through ``terminal.extensions``)."""

from django.urls import path

from terminal import views

urlpatterns: list = [  # type: ignore[type-arg]
    path("environments/<int:environment_id>/terminal/", views.terminal_page, name="environment_terminal"),
    path("environments/<int:environment_id>/terminal/ticket/", views.ticket, name="environment_terminal_ticket"),
    path("terminal/sessions/", views.session_list, name="terminal_sessions"),
    path("terminal/sessions/<int:session_id>/", views.session_replay, name="terminal_session"),
    path("terminal/sessions/<int:session_id>/cast/", views.session_cast, name="terminal_session_cast"),
    path("terminal/organizations/<int:organization_id>/", views.organization_terminal, name="terminal_organization"),
]
