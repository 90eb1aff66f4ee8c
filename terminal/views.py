"""The terminal's HTML pages: the terminal itself, its ticket (POST), recordings and their replay, and the
organization switch. Staff only; every object through ``for_user`` (another organization's answers 404)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from panel.accounts.choices import Action
from panel.accounts.models import Organization
from panel.accounts.scoping import for_user, get_for_user
from panel.accounts.services import record
from panel.inventory.choices import EnvironmentKind
from panel.middleware import CONTENT_SECURITY_POLICY
from terminal.models import Profile, TerminalSession
from terminal.services import (
    TerminalRefused,
    environment_for_terminal,
    issue_ticket,
    record_refusal,
    recording_path,
    terminals_enabled,
)

# asciinema-player runs its terminal emulator as WebAssembly (compiling it needs 'wasm-unsafe-eval', which allows no
# JavaScript eval) and positions its rows with style attributes; everything else as the panel's own policy.
REPLAY_CONTENT_SECURITY_POLICY = CONTENT_SECURITY_POLICY.replace(
    "script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'"
).replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


@require_GET
@login_required
def terminal_page(request: HttpRequest, environment_id: int) -> HttpResponse:
    """The terminal of an environment: pick a profile, confirm for production, open."""
    try:
        environment = environment_for_terminal(request.user, environment_id)
    except TerminalRefused as refusal:
        if refusal.code == 4404:
            raise Http404("No such environment.") from None
        return render(request, "terminal/disabled.html", {"message": str(refusal)}, status=403)
    profile = request.GET.get("profile", Profile.SHELL)
    context = {
        "environment": environment,
        "profiles": Profile.choices,
        "profile": profile if profile in Profile.values else Profile.SHELL,
        "production": environment.kind == EnvironmentKind.PRODUCTION,
        "may_replay": for_user(Organization, request.user, Action.ADMIN)
        .filter(pk=environment.project.organization_id)
        .exists(),
    }
    return render(request, "terminal/terminal.html", context)


@require_POST
@login_required
def ticket(request: HttpRequest, environment_id: int) -> JsonResponse:
    """A one-time ticket (30 s) for the terminal websocket of this environment and profile (CSRF-checked POST)."""
    try:
        environment = environment_for_terminal(request.user, environment_id)
        token = issue_ticket(
            user=request.user,
            environment=environment,
            profile=request.POST.get("profile", ""),
            confirmed=request.POST.get("confirm") == "yes",
        )
    except TerminalRefused as refusal:
        record_refusal(request.user, environment_id, refusal)
        status = {4404: 404, 4403: 403}.get(refusal.code, 400)
        return JsonResponse({"detail": str(refusal), "reason": refusal.reason}, status=status)
    return JsonResponse({"ticket": token, "ws_path": f"/ws/environments/{environment.pk}/terminal/"})


@require_GET
@login_required
def session_list(request: HttpRequest) -> HttpResponse:
    """The recorded sessions of the organizations the user owns (newest first)."""
    sessions = for_user(TerminalSession, request.user, Action.ADMIN).select_related("organization")[:200]
    return render(request, "terminal/sessions.html", {"sessions": sessions})


def _session(request: HttpRequest, session_id: int) -> TerminalSession:
    return get_for_user(TerminalSession, request.user, Action.ADMIN, pk=session_id)


@require_GET
@login_required
def session_replay(request: HttpRequest, session_id: int) -> HttpResponse:
    """Replay one recorded session in the browser (asciinema-player)."""
    session = _session(request, session_id)
    context = {"session": session, "has_recording": bool(recording_path(session))}
    response = render(request, "terminal/replay.html", context)
    response.headers["Content-Security-Policy"] = REPLAY_CONTENT_SECURITY_POLICY
    return response


@require_GET
@login_required
def session_cast(request: HttpRequest, session_id: int) -> FileResponse:
    """The session's recording (asciicast v2)."""
    session = _session(request, session_id)
    path = recording_path(session)
    if path is None:
        raise Http404("No recording.")
    response = FileResponse(path.open("rb"), content_type="application/x-asciicast")
    response["Content-Disposition"] = f'inline; filename="terminal-{session.pk}.cast"'
    return response


@require_http_methods(["GET", "POST"])
@login_required
def organization_terminal(request: HttpRequest, organization_id: int) -> HttpResponse:
    """An organization's owners turn terminals on or off for its environments."""
    organization = get_for_user(Organization, request.user, Action.ADMIN, pk=organization_id)
    if request.method == "POST":
        enabled = request.POST.get("enabled") == "yes"
        if enabled != organization.terminal_enabled:
            organization.terminal_enabled = enabled
            organization.save(update_fields=["terminal_enabled"])
            record(
                action="terminal.enabled" if enabled else "terminal.disabled",
                actor=request.user,
                obj=organization,
                request=request,
                security=True,
            )
        return redirect("terminal_organization", organization.pk)
    context = {"organization": organization, "effective": terminals_enabled(organization)}
    return render(request, "terminal/organization.html", context)
