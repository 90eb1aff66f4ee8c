"""Status pages in HTML: ``/status/`` (the pages the user may see), ``/status/<organization id>/`` (one page, its
settings and public link for owners and operators) and ``/status/p/<token>/`` (the public link, no login, cached
``MONITOR_STATUS_CACHE_SECONDS``). Domain logic lives in ``monitoring.statuspage``."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.html import format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.http import require_GET, require_POST

from monitoring import statuspage
from monitoring.models import StatusPage
from panel.accounts.choices import Action
from panel.accounts.models import Organization
from panel.accounts.scoping import can, for_user, get_for_user


def bars_markup(bars: list[dict[str, Any]]) -> SafeString:
    """The daily bars of one environment as HTML (escaped), each with its day, uptime and minutes down as data
    attributes. Built here rather than by the template language: 90 bars by 200 environments are 18,000 elements,
    which the template engine takes about a second to draw."""
    return format_html_join(
        "",
        '<span class="status-bar status-bar-{}" data-day="{}" data-uptime="{}" data-down-minutes="{}" title="{}">'
        "</span>",
        (
            (
                bar["level"],
                bar["day"].isoformat(),
                "" if bar["uptime"] is None else f"{bar['uptime']:.6f}",
                bar["down_minutes"],
                bar["label"],
            )
            for bar in bars
        ),
    )


def _with_markup(status: dict[str, Any]) -> dict[str, Any]:
    for env in status["environments"]:
        env["bars_markup"] = bars_markup(env["bars"])
    return status


@require_GET
@login_required
def status_index(request: HttpRequest) -> HttpResponse:
    """The organizations whose status page the user may see (straight to it when there is one)."""
    organizations = list(for_user(Organization, request.user, Action.VIEW).order_by("name"))
    if len(organizations) == 1:
        return redirect("status_page", organization_id=organizations[0].pk)
    return render(request, "monitoring/status_index.html", {"status_organizations": organizations})


def _organization(request: HttpRequest, organization_id: int, action: str = Action.VIEW) -> Organization:
    return get_for_user(Organization, request.user, action, pk=organization_id)


def _render_page(request: HttpRequest, organization: Organization, **extra: Any) -> HttpResponse:
    page = statuspage.page_for(organization)
    may_change = can(request.user, Action.CHANGE, organization)
    context: dict[str, Any] = {
        "status": _with_markup(statuspage.status_data(page)),
        "status_page": page,
        "may_change": may_change,
        "public": False,
        "includes": StatusPage.Include.choices,
        **extra,
    }
    if may_change:
        chosen = set(page.environments.values_list("pk", flat=True))
        context["choosable"] = [
            {"environment": env, "chosen": env.pk in chosen}
            for env in statuspage.Environment.objects.filter(project__organization=organization)
            .select_related("project")
            .order_by("project__name", "name")
        ]
    response = render(request, "monitoring/status.html", context)
    if "public_url" in extra:
        response["Cache-Control"] = "no-store"  # the new link is shown once
    return response


@require_GET
@login_required
def status_page(request: HttpRequest, organization_id: int) -> HttpResponse:
    """One organization's status page (members of it, and staff of its provider)."""
    return _render_page(request, _organization(request, organization_id))


@require_POST
@login_required
def status_settings(request: HttpRequest, organization_id: int) -> HttpResponse:
    """Change the page's title and environments (owners and operators)."""
    organization = _organization(request, organization_id, Action.CHANGE)
    include = request.POST.get("include", "")
    if include not in StatusPage.Include.values:
        messages.error(request, "Choose which environments the page shows.")
        return redirect("status_page", organization_id=organization.pk)
    wanted = [value for value in request.POST.getlist("environments") if value.isdigit() and len(value) < 19]
    chosen = statuspage.Environment.objects.filter(project__organization=organization, pk__in=wanted).select_related(
        "project"
    )
    statuspage.configure(
        page=statuspage.page_for(organization),
        actor=request.user,
        title=request.POST.get("title", ""),
        include=include,
        environments=chosen,
    )
    messages.success(request, "Status page saved.")
    return redirect("status_page", organization_id=organization.pk)


@require_POST
@login_required
def status_public_link(request: HttpRequest, organization_id: int) -> HttpResponse:
    """Create a public link (owners and operators); shown once, any older link stops working."""
    organization = _organization(request, organization_id, Action.CHANGE)
    token = statuspage.create_public_link(page=statuspage.page_for(organization), actor=request.user)
    url = request.build_absolute_uri(reverse("status_public", kwargs={"token": token}))
    return _render_page(request, organization, public_url=url)


@require_POST
@login_required
def status_public_revoke(request: HttpRequest, organization_id: int) -> HttpResponse:
    """Revoke the public link (owners and operators): it answers 404 from now on."""
    organization = _organization(request, organization_id, Action.CHANGE)
    if statuspage.revoke_public_link(page=statuspage.page_for(organization), actor=request.user):
        messages.success(request, "The public link no longer works.")
    return redirect("status_page", organization_id=organization.pk)


@require_GET
def status_public(request: HttpRequest, token: str) -> HttpResponse:
    """The page behind a public link, without login; 404 for an unknown or revoked token."""
    page = statuspage.page_for_token(token)
    if page is None:
        raise Http404("Not found.")
    response = render(
        request,
        "monitoring/status.html",
        {
            "status": _with_markup(statuspage.cached_status_data(page)),
            "status_page": page,
            "may_change": False,
            "public": True,
        },
    )
    # The token is in the address: keep it out of Referer headers, search engines and shared caches.
    response["Referrer-Policy"] = "no-referrer"
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Cache-Control"] = "private, no-cache"
    return response
