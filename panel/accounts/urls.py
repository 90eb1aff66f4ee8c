"""HTML routes of accounts."""

from django.urls import path

from panel.accounts import two_factor_views, views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.PanelLoginView.as_view(), name="login"),
    path("logout/", views.PanelLogoutView.as_view(), name="logout"),
    path("login/code/", two_factor_views.two_factor_login, name="two_factor_login"),
    path("account/two-factor/", two_factor_views.two_factor_settings, name="two_factor_settings"),
    path("account/two-factor/enroll/", two_factor_views.two_factor_enroll, name="two_factor_enroll"),
    path(
        "account/two-factor/recovery-codes/",
        two_factor_views.two_factor_recovery_codes,
        name="two_factor_recovery_codes",
    ),
    path("account/two-factor/disable/", two_factor_views.two_factor_disable, name="two_factor_disable"),
    path(
        "organizations/<int:organization_id>/two-factor/",
        two_factor_views.organization_two_factor,
        name="organization_two_factor",
    ),
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
