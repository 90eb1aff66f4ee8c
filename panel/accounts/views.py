"""HTML views of accounts: login/logout, home, organization switcher, audit log, API tokens, organizations, members
and invitations.

Organizations, memberships and invitations are reached through ``panel.accounts.scoping`` with ``Action.ADMIN``
(owners of the organization or of its provider); anything else answers 404. The invitation page is the one page
without login: its only key is the token, and every invalid token gets the same 404 page.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView, LogoutView
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import IntegrityError
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from panel.accounts import services, two_factor
from panel.accounts.choices import Action, Role
from panel.accounts.context import SESSION_KEY, current_organization, start_in_organization
from panel.accounts.forms import (
    ApiTokenForm,
    InvitationForm,
    InvitationSignupForm,
    LockoutAuthenticationForm,
    OrganizationCreateForm,
    OrganizationRenameForm,
    RoleForm,
    apply_validation_error,
)
from panel.accounts.models import ApiToken, AuditEvent, Invitation, Membership, Organization
from panel.accounts.scoping import for_user, get_for_user, organization_ids, role_in
from panel.accounts.services import InvitationInvalid, LastOwner, create_token, revoke_token
from panel.validators import parse_id

AUDIT_PAGE_SIZE = 50


class PanelLoginView(LoginView):
    """Django's login view with the lockout form; a signed-in user goes straight home.

    A user who needs a second factor is not logged in by the password: the code step (or, for a user an
    organization requires it of, the enrolment) finishes the login (see ``panel.accounts.two_factor``).
    """

    form_class = LockoutAuthenticationForm
    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """A new password attempt starts over: forget any half-done login."""
        two_factor.clear_pending(request)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        """Log in (or go on to the second factor), then start in an organization the user is a direct member of."""
        user = form.get_user()
        if two_factor.two_factor_needed(user):
            two_factor.begin_login(self.request, user, next_url=self.get_success_url())
            if two_factor.confirmed_device(user) is None:
                return redirect("two_factor_enroll")
            return redirect("two_factor_login")
        response = super().form_valid(form)
        start_in_organization(self.request, user)
        return response


class PanelLogoutView(LogoutView):
    """Logout by POST only (Django's LogoutView refuses GET)."""


@require_GET
@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Staff roles start on the fleet dashboard (when monitoring is installed; else their servers), customers on
    their projects. The dashboard is looked up by URL name: accounts imports no feature app."""
    organization = current_organization(request)
    role = role_in(request.user, organization) if organization else None
    if role in ("owner", "operator", "viewer"):
        try:
            return redirect(reverse("dashboard"))
        except NoReverseMatch:
            return redirect("server_list")
    return redirect("project_list")


@require_POST
@login_required
def switch_organization(request: HttpRequest) -> HttpResponse:
    """Remember the organization chosen in the switcher (only one the user belongs to, directly or as staff)."""
    chosen = parse_id(request.POST.get("organization"))
    organization = for_user(Organization, request.user, Action.VIEW).filter(pk=chosen).first() if chosen else None
    if organization is None:
        raise Http404("Not found.")
    request.session[SESSION_KEY] = organization.pk
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = ""
    return redirect(target or "home")


@require_GET
@login_required
def audit_log(request: HttpRequest) -> HttpResponse:
    """Audit events of the organizations the user administers; superusers also see global security events."""
    admin_ids = organization_ids(request.user, Action.ADMIN)
    if not admin_ids and not request.user.is_superuser:
        raise Http404("Not found.")
    if request.user.is_superuser:
        # Events without an organization (failed logins, bootstrap) belong to no tenant: superusers only.
        events = AuditEvent.objects.filter(Q(organization_id__in=admin_ids) | Q(organization__isnull=True))
    else:
        events = for_user(AuditEvent, request.user, Action.ADMIN)
    security_only = request.GET.get("security") == "1"
    if security_only:
        events = events.filter(is_security=True)
    page = Paginator(events.select_related("organization"), AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "accounts/audit_log.html", {"page": page, "security_only": security_only})


@never_cache
@require_http_methods(["GET", "POST"])
@login_required
def api_tokens(request: HttpRequest) -> HttpResponse:
    """List the user's own tokens and create one; the plain token is shown in this one response only."""
    plain_token = None
    if request.method == "POST":
        form = ApiTokenForm(request.POST)
        if form.is_valid():
            token, plain_token = create_token(
                user=request.user,
                name=form.cleaned_data["name"],
                scope=form.cleaned_data["scope"],
                days=form.cleaned_data["days"],
            )
            messages.success(request, f"Token “{token.name}” created. Copy it now: it will not be shown again.")
            form = ApiTokenForm()
    else:
        form = ApiTokenForm()
    tokens = ApiToken.objects.filter(user_id=int(request.user.pk or 0))
    return render(request, "accounts/tokens.html", {"form": form, "tokens": tokens, "plain_token": plain_token})


@require_POST
@login_required
def revoke_api_token(request: HttpRequest, token_id: int) -> HttpResponse:
    """Revoke one of the user's own tokens (another user's token id answers 404)."""
    token = get_object_or_404(ApiToken, pk=token_id, user_id=int(request.user.pk or 0), revoked_at__isnull=True)
    revoke_token(token=token, actor=request.user)
    messages.success(request, f"Token “{token.name}” revoked.")
    return redirect("api_tokens")


# Organizations, members, invitations ---------------------------------------------------------------------------------


def _forget_roles(request: HttpRequest) -> None:
    """Drop the per-request cache of the user's organizations after their own membership changed."""
    request.user.__dict__.pop("_panel_org_ids", None)


@never_cache
@require_http_methods(["GET", "POST"])
@login_required
def organization_list(request: HttpRequest) -> HttpResponse:
    """Organizations the user can see, with their role; owners of a provider create customer organizations here."""
    providers = services.provider_organizations(request.user)
    form = None
    if providers.exists():
        form = OrganizationCreateForm(request.POST if request.method == "POST" else None, providers=providers)
    if request.method == "POST":
        if form is None:
            raise Http404("Not found.")
        if form.is_valid():
            data = form.cleaned_data
            try:
                organization = services.create_organization(
                    actor=request.user,
                    name=data["name"],
                    slug=data["slug"],
                    managed_by=data["managed_by"],
                    request=request,
                )
            except ValidationError as exc:
                apply_validation_error(form, exc)
            except IntegrityError:
                form.add_error(None, "An organization with this name or slug already exists.")
            else:
                messages.success(request, f"Organization “{organization.name}” created. Invite its members here.")
                return redirect("organization_members", organization_id=organization.pk)
    admin_ids = organization_ids(request.user, Action.ADMIN)
    rows = [
        {
            "organization": organization,
            "role": role_in(request.user, organization),
            "admin": organization.pk in admin_ids,
        }
        for organization in for_user(Organization, request.user, Action.VIEW).select_related("managed_by")
    ]
    return render(request, "accounts/organization_list.html", {"rows": rows, "form": form})


def _members_page(
    request: HttpRequest,
    organization: Organization,
    *,
    invite_form: InvitationForm | None = None,
    rename_form: OrganizationRenameForm | None = None,
    invite_link: str | None = None,
    status: int = 200,
) -> HttpResponse:
    default_role = Role.CUSTOMER if organization.managed_by_id else Role.VIEWER
    memberships = (
        for_user(Membership, request.user, Action.ADMIN)
        .filter(organization=organization)
        .select_related("user")
        .order_by("user__username")
    )
    invitations = for_user(Invitation, request.user, Action.ADMIN).filter(organization=organization)
    owners = [m.pk for m in memberships if m.role == Role.OWNER]
    context = {
        "organization": organization,
        "memberships": memberships,
        "last_owner_id": owners[0] if len(owners) == 1 else None,
        "pending": [invitation for invitation in invitations if invitation.is_usable],
        "past": [invitation for invitation in invitations if not invitation.is_usable][:20],
        "invite_form": invite_form or InvitationForm(initial={"role": default_role}),
        "rename_form": rename_form or OrganizationRenameForm(initial={"name": organization.name}),
        "role_choices": Role.choices,
        "invite_link": invite_link,
    }
    return render(request, "accounts/organization_members.html", context, status=status)


@never_cache
@require_GET
@login_required
def organization_members(request: HttpRequest, organization_id: int) -> HttpResponse:
    """Members and roles, pending invitations, the invite form (owners of the organization or of its provider)."""
    organization = get_for_user(Organization, request.user, Action.ADMIN, pk=organization_id)
    return _members_page(request, organization)


@require_POST
@login_required
def organization_rename(request: HttpRequest, organization_id: int) -> HttpResponse:
    """Give the organization a new display name."""
    organization = get_for_user(Organization, request.user, Action.ADMIN, pk=organization_id)
    form = OrganizationRenameForm(request.POST)
    if form.is_valid():
        try:
            services.rename_organization(
                actor=request.user, organization=organization, name=form.cleaned_data["name"], request=request
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        except IntegrityError:
            form.add_error("name", "An organization with this name already exists.")
        else:
            messages.success(request, f"Renamed to “{organization.name}”.")
            return redirect("organization_members", organization_id=organization.pk)
    organization.refresh_from_db()
    return _members_page(request, organization, rename_form=form, status=400)


@never_cache
@require_http_methods(["GET", "POST"])
@login_required
def invitation_create(request: HttpRequest, organization_id: int) -> HttpResponse:
    """Create an invitation; its link is shown in this one response (only a hash of its token is stored).

    A GET (the address bar after a POST) goes back to the members page.
    """
    organization = get_for_user(Organization, request.user, Action.ADMIN, pk=organization_id)
    if request.method != "POST":
        return redirect("organization_members", organization_id=organization.pk)
    form = InvitationForm(request.POST)
    if not form.is_valid():
        return _members_page(request, organization, invite_form=form, status=400)
    invitation, token = services.create_invitation(
        actor=request.user,
        organization=organization,
        email=form.cleaned_data["email"],
        role=form.cleaned_data["role"],
        request=request,
    )
    link = request.build_absolute_uri(reverse("invitation_accept", args=[token]))
    messages.success(
        request,
        f"Invitation for {invitation.email} created. Copy the link now and pass it on: it is shown only once, "
        f"works once and expires on {invitation.expires_at:%Y-%m-%d %H:%M} UTC.",
    )
    return _members_page(request, organization, invite_link=link)


@require_POST
@login_required
def invitation_revoke(request: HttpRequest, organization_id: int, invitation_id: int) -> HttpResponse:
    """Revoke a pending invitation: its link stops working at once."""
    organization = get_for_user(Organization, request.user, Action.ADMIN, pk=organization_id)
    invitation = get_for_user(Invitation, request.user, Action.ADMIN, pk=invitation_id, organization=organization)
    if services.revoke_invitation(actor=request.user, invitation=invitation, request=request):
        messages.success(request, f"Invitation for {invitation.email} revoked.")
    else:
        messages.warning(request, f"The invitation for {invitation.email} was no longer pending.")
    return redirect("organization_members", organization_id=organization.pk)


@require_POST
@login_required
def member_role(request: HttpRequest, organization_id: int, membership_id: int) -> HttpResponse:
    """Change a member's role (never the last owner's)."""
    organization = get_for_user(Organization, request.user, Action.ADMIN, pk=organization_id)
    membership = get_for_user(Membership, request.user, Action.ADMIN, pk=membership_id, organization=organization)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose one of the roles.")
        return redirect("organization_members", organization_id=organization.pk)
    try:
        services.change_role(actor=request.user, membership=membership, role=form.cleaned_data["role"], request=request)
    except LastOwner as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{membership.user} is now {form.cleaned_data['role']} of {organization}.")
    return _back_to_members(request, organization)


@require_POST
@login_required
def member_remove(request: HttpRequest, organization_id: int, membership_id: int) -> HttpResponse:
    """Take a member out of the organization (never its last owner)."""
    organization = get_for_user(Organization, request.user, Action.ADMIN, pk=organization_id)
    membership = get_for_user(Membership, request.user, Action.ADMIN, pk=membership_id, organization=organization)
    try:
        services.remove_member(actor=request.user, membership=membership, request=request)
    except LastOwner as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{membership.user} is no longer a member of {organization}.")
    return _back_to_members(request, organization)


def _back_to_members(request: HttpRequest, organization: Organization) -> HttpResponse:
    """The members page, or the organizations list when the user just gave up administering this organization."""
    _forget_roles(request)
    if organization.pk in organization_ids(request.user, Action.ADMIN):
        return redirect("organization_members", organization_id=organization.pk)
    return redirect("organization_list")


def _invalid_invitation(request: HttpRequest) -> HttpResponse:
    """The one answer for an unknown, expired, revoked or used link: nothing tells them apart."""
    return render(request, "accounts/invitation_invalid.html", status=404)


@never_cache
@require_http_methods(["GET", "POST"])
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """Accept an invitation: into the signed-in account, or into a new one (user name and password).

    No login needed; the token is the only key. Accepting is a POST (CSRF-protected) and single-use.
    """
    actor = request.user if request.user.is_authenticated else None
    try:
        invitation = services.usable_invitation(token, request=request, actor=actor)
    except InvitationInvalid:
        return _invalid_invitation(request)
    form = None
    if actor is None:
        form = InvitationSignupForm(request.POST if request.method == "POST" else None, email=invitation.email)
    if request.method == "POST" and (form is None or form.is_valid()):
        try:
            if form is None:
                membership = services.accept_invitation(invitation=invitation, user=actor, request=request)
            else:
                membership = services.accept_invitation(
                    invitation=invitation,
                    username=form.cleaned_data["username"],
                    password=form.cleaned_data["password1"],
                    request=request,
                )
                login(request, membership.user)
        except InvitationInvalid:
            return _invalid_invitation(request)
        except IntegrityError:
            assert form is not None
            form.add_error("username", "This user name is taken; choose another.")
        else:
            request.session[SESSION_KEY] = invitation.organization_id
            messages.success(request, f"Welcome to {invitation.organization.name}: you are {membership.role}.")
            return redirect("home")
    return render(request, "accounts/invitation_accept.html", {"invitation": invitation, "form": form})
