"""HTML views of accounts: login/logout, home, organization switcher, audit log, API tokens."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView, LogoutView
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from panel.accounts.choices import Action
from panel.accounts.context import SESSION_KEY, current_organization
from panel.accounts.forms import ApiTokenForm, LockoutAuthenticationForm
from panel.accounts.models import ApiToken, AuditEvent, Membership, Organization
from panel.accounts.scoping import for_user, organization_ids, role_in
from panel.accounts.services import create_token, revoke_token

AUDIT_PAGE_SIZE = 50


class PanelLoginView(LoginView):
    """Django's login view with the lockout form; a signed-in user goes straight home."""

    form_class = LockoutAuthenticationForm
    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        """Log in, then start in an organization the user is a direct member of (not a managed customer's)."""
        response = super().form_valid(form)
        membership = Membership.objects.filter(user=form.get_user()).order_by("organization__name").first()
        if membership is not None:
            self.request.session[SESSION_KEY] = membership.organization_id
        return response


class PanelLogoutView(LogoutView):
    """Logout by POST only (Django's LogoutView refuses GET)."""


@require_GET
@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Staff roles start on their servers, customers on their projects."""
    organization = current_organization(request)
    role = role_in(request.user, organization) if organization else None
    if role in ("owner", "operator", "viewer"):
        return redirect("server_list")
    return redirect("project_list")


@require_POST
@login_required
def switch_organization(request: HttpRequest) -> HttpResponse:
    """Remember the organization chosen in the switcher (only one the user belongs to, directly or as staff)."""
    chosen = request.POST.get("organization", "")
    organization = (
        for_user(Organization, request.user, Action.VIEW).filter(pk=chosen).first() if chosen.isdigit() else None
    )
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
