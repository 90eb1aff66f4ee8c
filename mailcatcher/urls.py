"""The mail catcher's HTML routes (included at the root through ``mailcatcher.extensions``)."""

from django.urls import path

from mailcatcher import views

urlpatterns: list = [  # type: ignore[type-arg]
    path("environments/<int:environment_id>/mails/", views.mail_list, name="mailcatcher_list"),
    path("environments/<int:environment_id>/mails/delete/", views.mail_delete_all, name="mailcatcher_delete_all"),
    path("environments/<int:environment_id>/mails/<str:message_id>/", views.mail_detail, name="mailcatcher_detail"),
    path("environments/<int:environment_id>/mails/<str:message_id>/html/", views.mail_html, name="mailcatcher_html"),
    path(
        "environments/<int:environment_id>/mails/<str:message_id>/attachments/<str:part>/",
        views.mail_attachment,
        name="mailcatcher_attachment",
    ),
]
