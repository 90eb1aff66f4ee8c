"""HTML routes of accounts."""

from django.urls import path

from panel.accounts import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.PanelLoginView.as_view(), name="login"),
    path("logout/", views.PanelLogoutView.as_view(), name="logout"),
    path("org/switch/", views.switch_organization, name="switch_organization"),
    path("audit/", views.audit_log, name="audit_log"),
    path("tokens/", views.api_tokens, name="api_tokens"),
    path("tokens/<int:token_id>/revoke/", views.revoke_api_token, name="revoke_api_token"),
]
