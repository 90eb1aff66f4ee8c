"""HTML routes of alerts: incidents, notification channels and maintenance windows (included by monitoring.urls)."""

from django.urls import path

from monitoring import alert_views

urlpatterns = [
    path("incidents/", alert_views.incident_list, name="incident_list"),
    path("incidents/<int:incident_id>/", alert_views.incident_detail, name="incident_detail"),
    path("notification-channels/", alert_views.channel_list, name="notification_channel_list"),
    path("notification-channels/new/", alert_views.channel_create, name="notification_channel_create"),
    path("notification-channels/<int:channel_id>/edit/", alert_views.channel_edit, name="notification_channel_edit"),
    path("notification-channels/<int:channel_id>/test/", alert_views.channel_test, name="notification_channel_test"),
    path(
        "notification-channels/<int:channel_id>/delete/",
        alert_views.channel_delete,
        name="notification_channel_delete",
    ),
    path("maintenance-windows/", alert_views.window_list, name="maintenance_window_list"),
    path("maintenance-windows/<int:window_id>/end/", alert_views.window_end, name="maintenance_window_end"),
]
