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
    path("organizations/", views.organization_list, name="organization_list"),
    path("organizations/<int:organization_id>/members/", views.organization_members, name="organization_members"),
    path("organizations/<int:organization_id>/rename/", views.organization_rename, name="organization_rename"),
    path(
        "organizations/<int:organization_id>/members/<int:membership_id>/role/",
        views.member_role,
        name="member_role",
    ),
    path(
        "organizations/<int:organization_id>/members/<int:membership_id>/remove/",
        views.member_remove,
        name="member_remove",
    ),
    path("organizations/<int:organization_id>/invitations/", views.invitation_create, name="invitation_create"),
    path(
        "organizations/<int:organization_id>/invitations/<int:invitation_id>/revoke/",
        views.invitation_revoke,
        name="invitation_revoke",
    ),
    path("invite/<str:token>/", views.invitation_accept, name="invitation_accept"),
]
