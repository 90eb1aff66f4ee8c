"""HTML views of servers, projects and environments.

Every object is reached through ``panel.accounts.scoping``: another organization's id, or an action the role does
not allow, answers 404. Domain actions (onboarding, validation, creation) live in ``panel.inventory.services``.
Feature apps (deployments, backups, monitoring) add their sections and buttons to the environment page through
``panel.extensions``; this module imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from panel import extensions
from panel.accounts.choices import Action
from panel.accounts.context import current_organization
from panel.accounts.models import Organization
from panel.accounts.scoping import can, for_user, get_for_user
from panel.accounts.services import record
from panel.inventory import proxy, services
from panel.inventory.choices import DeleteChoice
from panel.inventory.display import state_badges
from panel.inventory.forms import (
    EnvironmentDeleteForm,
    EnvironmentForm,
    ProjectForm,
    ServerCreateForm,
    ServerEditForm,
    apply_validation_error,
)
from panel.inventory.models import Environment, Project, Server
from panel.jobs.models import Job
from panel.jobs.runner import JobFailed
from panel.jobs.views import active_job, follow_started_job
from panel.remote import RemoteError
from panel.validators import parse_id

RECENT_JOBS = 10


def changeable_organizations(request: HttpRequest) -> QuerySet[Organization]:
    """Organizations where the user may create things; none at all answers 404 (customers, viewers)."""
    organizations = for_user(Organization, request.user, Action.CHANGE)
    if not organizations.exists():
        raise Http404("Not found.")
    return organizations


def in_current_organization(request: HttpRequest, queryset: QuerySet[Any], path: str) -> QuerySet[Any]:
    """Narrow a scoped list to the organization chosen in the switcher and the organizations it manages."""
    organization = current_organization(request)
    if organization is None:
        return queryset.none()
    return queryset.filter(Q(**{path: organization}) | Q(**{f"{path}__managed_by": organization}))


def initial_organization(request: HttpRequest, organizations: QuerySet[Organization]) -> dict[str, Any]:
    """Preselect the switcher's organization in create forms when the user may create there."""
    organization = current_organization(request)
    if organization is not None and organizations.filter(pk=organization.pk).exists():
        return {"organization": organization}
    return {}


# Servers ------------------------------------------------------------------------------------------------------------


@require_GET
@login_required
def server_list(request: HttpRequest) -> HttpResponse:
    """Servers of the current organization (staff roles only; customers see no servers at all)."""
    servers = in_current_organization(request, for_user(Server, request.user, Action.VIEW_DETAILS), "organization")
    return render(request, "inventory/server_list.html", {"servers": servers.select_related("organization")})


def save_audited(form: Any, request: HttpRequest, action: str) -> None:
    """Save a model form and record who changed which fields, in one transaction."""
    with transaction.atomic():
        instance = form.save()
        record(action=action, actor=request.user, obj=instance, request=request, detail={"fields": form.changed_data})


@require_http_methods(["GET", "POST"])
@login_required
def server_create(request: HttpRequest) -> HttpResponse:
    """Register a server: its host key is read now and shown for confirmation on the next page."""
    organizations = changeable_organizations(request)
    form = ServerCreateForm(
        request.POST if request.method == "POST" else None,
        organizations=organizations,
        initial=initial_organization(request, organizations),
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            server = services.create_server(
                organization=data["organization"],
                actor=request.user,
                name=data["name"],
                host=data["host"],
                port=data["port"],
                username=data["username"],
                private_key=data["private_key"],
            )
        except RemoteError as exc:
            form.add_error(None, str(exc))
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            return redirect("server_confirm", server_id=server.pk)
    return render(request, "inventory/server_form.html", {"form": form, "creating": True})


@require_http_methods(["GET", "POST"])
@login_required
def server_confirm(request: HttpRequest, server_id: int) -> HttpResponse:
    """Show the presented host key's fingerprint; pin it when a person says they verified it."""
    server = get_for_user(Server, request.user, Action.CHANGE, pk=server_id)
    if request.method == "POST":
        try:
            services.confirm_host_key(
                server=server, actor=request.user, fingerprint=request.POST.get("fingerprint", "")
            )
        except JobFailed as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, "Host key pinned. Install the public key on the server, then validate it.")
            return redirect("server_detail", server_id=server.pk)
    return render(request, "inventory/server_confirm.html", {"server": server})


def _server_context(request: HttpRequest, server: Server) -> dict[str, Any]:
    jobs = for_user(Job, request.user, Action.VIEW_DETAILS).filter(server=server)
    job_id = parse_id(request.GET.get("job"))
    selected = jobs.filter(pk=job_id).first() if job_id else None
    return {
        "server": server,
        "jobs": jobs[:RECENT_JOBS],
        "log_job": selected or jobs.first(),
        "running_job": active_job(jobs),
        "may_change": can(request.user, Action.CHANGE, server),
        "environments": for_user(Environment, request.user, Action.VIEW_DETAILS).filter(server=server),
    }


@require_GET
@login_required
def server_detail(request: HttpRequest, server_id: int) -> HttpResponse:
    """Facts, status, the public key to install, recent jobs and the live log of the latest (or chosen) job."""
    server = get_for_user(Server, request.user, Action.VIEW_DETAILS, pk=server_id)
    return render(request, "inventory/server_detail.html", _server_context(request, server))


@require_GET
@login_required
def server_facts(request: HttpRequest, server_id: int) -> HttpResponse:
    """The facts panel alone, reloaded by htmx when the job shown on the page ends."""
    server = get_for_user(Server, request.user, Action.VIEW_DETAILS, pk=server_id)
    return render(request, "inventory/_server_facts.html", {"server": server})


def _queue_server_job(request: HttpRequest, server_id: int, doing: str, start: Callable[[Server], Job]) -> HttpResponse:
    """Queue a server job with ``start`` and follow it live (a pinned host key first; busy: say which job runs)."""
    server = get_for_user(Server, request.user, Action.CHANGE, pk=server_id)
    if not server.host_key_pinned:
        messages.error(request, f"Confirm the server's host key fingerprint before {doing}.")
        return redirect("server_confirm", server_id=server.pk)
    return follow_started_job(request, lambda: start(server), reverse("server_detail", args=[server.pk]))


@require_POST
@login_required
def server_validate(request: HttpRequest, server_id: int) -> HttpResponse:
    """Queue a validation job and follow it live."""
    return _queue_server_job(
        request, server_id, "validating it", lambda server: services.start_validation(server=server, actor=request.user)
    )


@require_POST
@login_required
def server_proxy(request: HttpRequest, server_id: int) -> HttpResponse:
    """Queue a job installing or updating the server's Traefik and follow it live."""
    return _queue_server_job(
        request, server_id, "installing its proxy",
        lambda server: proxy.start_proxy_install(server=server, actor=request.user),
    )  # fmt: skip


@require_POST
@login_required
def server_prepare(request: HttpRequest, server_id: int) -> HttpResponse:
    """Queue a *Prepare server* job (``install=1``: install what is missing, if the login may) and follow it."""
    install = request.POST.get("install") == "1"
    return _queue_server_job(
        request, server_id, "preparing it",
        lambda server: services.start_prepare(server=server, actor=request.user, install=install),
    )  # fmt: skip


@require_POST
@login_required
def server_refetch_host_key(request: HttpRequest, server_id: int) -> HttpResponse:
    """Read the host key again (after a reinstall); it must be confirmed again."""
    server = get_for_user(Server, request.user, Action.CHANGE, pk=server_id)
    try:
        services.refetch_host_key(server=server, actor=request.user)
    except RemoteError as exc:
        messages.error(request, str(exc))
        return redirect("server_detail", server_id=server.pk)
    return redirect("server_confirm", server_id=server.pk)


@require_http_methods(["GET", "POST"])
@login_required
def server_edit(request: HttpRequest, server_id: int) -> HttpResponse:
    """Change a server's name, labels, port and user."""
    server = get_for_user(Server, request.user, Action.CHANGE, pk=server_id)
    form = ServerEditForm(request.POST if request.method == "POST" else None, instance=server)
    if request.method == "POST" and form.is_valid():
        try:
            save_audited(form, request, "server.updated")
        except IntegrityError:  # renamed at the same moment by someone else
            form.add_error("name", "Another server of this organization is already named so.")
        else:
            messages.success(request, "Server saved.")
            return redirect("server_detail", server_id=server.pk)
    return render(request, "inventory/server_form.html", {"form": form, "server": server, "creating": False})


@require_http_methods(["GET", "POST"])
@login_required
def server_delete(request: HttpRequest, server_id: int) -> HttpResponse:
    """Remove a server from the panel (refused while environments use it or a job runs on it)."""
    server = get_for_user(Server, request.user, Action.CHANGE, pk=server_id)
    if request.method == "POST":
        if active_job(Job.objects.filter(server=server)) is not None:
            messages.error(request, "A job is running on this server; wait for it to end.")
            return redirect("server_detail", server_id=server.pk)
        try:
            with transaction.atomic():
                record(action="server.deleted", actor=request.user, obj=server, request=request)
                server.delete()
        except ProtectedError:
            messages.error(request, "Environments still use this server: move or delete them first.")
            return redirect("server_detail", server_id=server.pk)
        messages.success(request, f"Server {server.name} removed.")
        return redirect("server_list")
    return render(
        request,
        "inventory/confirm_delete.html",
        {"object": server, "cancel_url": reverse("server_detail", args=[server.pk])},
    )


# Projects -----------------------------------------------------------------------------------------------------------


@require_GET
@login_required
def project_list(request: HttpRequest) -> HttpResponse:
    """Projects of the current organization (and of the customers it manages)."""
    projects = in_current_organization(request, for_user(Project, request.user, Action.VIEW), "organization")
    return render(
        request,
        "inventory/project_list.html",
        {"projects": projects.select_related("organization").prefetch_related("environments")},
    )


@require_http_methods(["GET", "POST"])
@login_required
def project_create(request: HttpRequest) -> HttpResponse:
    """Create a project; a deploy key pair is generated for it."""
    organizations = changeable_organizations(request)
    form = ProjectForm(
        request.POST if request.method == "POST" else None,
        organizations=organizations,
        initial=initial_organization(request, organizations),
    )
    if request.method == "POST" and form.is_valid():
        data = {name: value for name, value in form.cleaned_data.items() if name != "organization"}
        try:
            project = services.create_project(
                organization=form.cleaned_data["organization"], actor=request.user, **data
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"Project {project.name} created.")
            return redirect("project_detail", project_id=project.pk)
    return render(request, "inventory/project_form.html", {"form": form, "creating": True})


def environment_status(request: HttpRequest, environments: QuerySet[Environment]) -> list[dict[str, Any]]:
    """Each environment with its deployment state and latest job (what customers see as its status)."""
    jobs = for_user(Job, request.user, Action.VIEW)
    return [
        {
            "environment": environment,
            "latest_job": jobs.filter(environment=environment).first(),
            "state": state_badges(
                services.environment_state(environment),
                customer=not can(request.user, Action.VIEW_DETAILS, environment),
            ),
        }
        for environment in environments
    ]


@require_GET
@login_required
def project_detail(request: HttpRequest, project_id: int) -> HttpResponse:
    """A project and its environments; repository and servers only for roles that see details."""
    project = get_for_user(Project, request.user, Action.VIEW, pk=project_id)
    environments = (
        for_user(Environment, request.user, Action.VIEW)
        .filter(project=project)
        .select_related("server", "current_deployment")
    )
    show_details = can(request.user, Action.VIEW_DETAILS, project)
    may_change = can(request.user, Action.CHANGE, project)
    page = {
        "project": project,
        "environments": environment_status(request, environments),
        "show_details": show_details,
        "webhook_url": request.build_absolute_uri(reverse("git-webhook", args=[project.webhook_id]))
        if show_details
        else "",
        "may_change": may_change,
    }
    context = extensions.page_context(
        "project", request, project, show_details=show_details, may_change=may_change, base=page
    )
    return render(request, "inventory/project_detail.html", context)


@require_http_methods(["GET", "POST"])
@login_required
def project_edit(request: HttpRequest, project_id: int) -> HttpResponse:
    """Change a project's name, repository, branch and Odoo version."""
    project = get_for_user(Project, request.user, Action.CHANGE, pk=project_id)
    form = ProjectForm(request.POST if request.method == "POST" else None, instance=project)
    if request.method == "POST" and form.is_valid():
        save_audited(form, request, "project.updated")
        messages.success(request, "Project saved.")
        return redirect("project_detail", project_id=project.pk)
    return render(request, "inventory/project_form.html", {"form": form, "project": project, "creating": False})


@require_http_methods(["GET", "POST"])
@login_required
def project_delete(request: HttpRequest, project_id: int) -> HttpResponse:
    """Remove a project from the panel; refused while it has environments that were not destroyed (each one is
    removed on its own, with a choice of what happens on its server)."""
    project = get_for_user(Project, request.user, Action.CHANGE, pk=project_id)
    if request.method == "POST":
        if active_job(Job.objects.filter(environment__project=project)) is not None:
            messages.error(request, "A job is running on one of this project's environments; wait for it to end.")
            return redirect("project_detail", project_id=project.pk)
        left = services.environments_not_destroyed(project)
        if left:
            messages.error(
                request,
                f"Remove its environments first ({', '.join(left)}): each one needs a choice of what happens on "
                "its server (destroy it, or leave it running).",
            )
            return redirect("project_detail", project_id=project.pk)
        with transaction.atomic():
            record(action="project.deleted", actor=request.user, obj=project, request=request)
            project.delete()
        messages.success(request, f"Project {project.name} removed.")
        return redirect("project_list")
    return render(
        request,
        "inventory/confirm_delete.html",
        {"object": project, "cancel_url": reverse("project_detail", args=[project.pk])},
    )


# Environments -------------------------------------------------------------------------------------------------------


def servers_for(request: HttpRequest, project: Project) -> QuerySet[Server]:
    """Servers an environment of ``project`` may run on: its organization's or its provider's."""
    allowed = [project.organization_id, project.organization.managed_by_id]
    return for_user(Server, request.user, Action.CHANGE).filter(organization_id__in=[i for i in allowed if i])


@require_http_methods(["GET", "POST"])
@login_required
def environment_create(request: HttpRequest, project_id: int) -> HttpResponse:
    """Add an environment to a project."""
    project = get_for_user(Project, request.user, Action.CHANGE, pk=project_id)
    form = EnvironmentForm(
        request.POST if request.method == "POST" else None,
        servers=servers_for(request, project),
        initial={"git_ref": project.default_branch},
    )
    if request.method == "POST" and form.is_valid():
        fields = form.model_fields()
        server = fields.pop("server")
        try:
            environment = services.create_environment(
                project=project, server=server, actor=request.user, secrets=form.cleaned_data["secrets_text"], **fields
            )
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, f"Environment {environment.name} created.")
            return redirect("environment_detail", environment_id=environment.pk)
    return render(request, "inventory/environment_form.html", {"form": form, "project": project, "creating": True})


@require_GET
@login_required
def environment_detail(request: HttpRequest, environment_id: int) -> HttpResponse:
    """An environment's status; configuration (never secret values) only for roles that see details."""
    environment = get_for_user(
        Environment.objects.select_related("project", "server", "current_deployment__triggered_by"),
        request.user,
        Action.VIEW,
        pk=environment_id,
    )
    show_details = can(request.user, Action.VIEW_DETAILS, environment)
    may_change = can(request.user, Action.CHANGE, environment)
    jobs = for_user(Job, request.user, Action.VIEW_DETAILS if show_details else Action.VIEW).filter(
        environment=environment
    )
    state = services.environment_state(environment)
    page = {
        "environment": environment,
        "show_details": show_details,
        "may_change": may_change,
        "state": state_badges(state, customer=not show_details),
        "environment_state": state,
        "latest_job": jobs.first(),
        "jobs": jobs[:RECENT_JOBS] if show_details else [],
        "secret_names": sorted(environment.get_secrets()) if show_details else [],
    }
    context = extensions.page_context(
        "environment", request, environment, show_details=show_details, may_change=may_change, base=page
    )
    return render(request, "inventory/environment_detail.html", context)


@require_http_methods(["GET", "POST"])
@login_required
def environment_edit(request: HttpRequest, environment_id: int) -> HttpResponse:
    """Change an environment's configuration; secrets are replaced only when new ones are entered."""
    environment = get_for_user(
        Environment.objects.select_related("project"), request.user, Action.CHANGE, pk=environment_id
    )
    form = EnvironmentForm(
        request.POST if request.method == "POST" else None, instance=environment, servers=Server.objects.none()
    )
    if request.method == "POST" and form.is_valid():
        try:
            save_audited(form, request, "environment.updated")
        except ValidationError as exc:
            apply_validation_error(form, exc)
        else:
            messages.success(request, "Environment saved.")
            return redirect("environment_detail", environment_id=environment.pk)
    return render(
        request,
        "inventory/environment_form.html",
        {"form": form, "project": environment.project, "environment": environment, "creating": False},
    )


@require_http_methods(["GET", "POST"])
@login_required
def environment_delete(request: HttpRequest, environment_id: int) -> HttpResponse:
    """Remove an environment from the panel once the operator chose what happens on the server: it was destroyed
    (its Destroy job succeeded), or it is left running there (the audit entry lists what was left). Without a
    choice the form says so and nothing is removed."""
    environment = get_for_user(
        Environment.objects.select_related("project", "server"), request.user, Action.CHANGE, pk=environment_id
    )
    project = environment.project
    form = EnvironmentDeleteForm(request.POST if request.method == "POST" else None, environment=environment)
    if request.method == "POST":
        if active_job(Job.objects.filter(environment=environment)) is not None:
            messages.error(request, "A job is running on this environment; wait for it to end.")
            return redirect("environment_detail", environment_id=environment.pk)
        if form.is_valid():
            try:
                detail = services.remove_environment(
                    environment=environment, actor=request.user, choice=form.cleaned_data["choice"], request=request
                )
            except services.RemovalRefused as exc:
                form.add_error("choice", str(exc))
            else:
                left = detail.get("left") or {}
                if detail["choice"] == DeleteChoice.LEAVE_RUNNING:
                    containers = left.get("containers")
                    what = (
                        f"{len(containers)} containers and {len(left.get('volumes') or [])} volumes were left on "
                        f"{left.get('server')}"
                        if containers is not None
                        else f"what runs on {left.get('server')} could not be listed ({left.get('error')})"
                    )
                    messages.success(request, f"Environment {environment.name} removed from the panel; {what}.")
                else:
                    messages.success(request, f"Environment {environment.name} (destroyed) removed from the panel.")
                return redirect("project_detail", project_id=project.pk)
    return render(
        request,
        "inventory/environment_delete.html",
        {
            "object": environment,
            "environment": environment,
            "form": form,
            "state": services.environment_state(environment),
            "cancel_url": reverse("environment_detail", args=[environment.pk]),
        },
        status=400 if request.method == "POST" else 200,
    )
