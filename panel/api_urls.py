"""The REST API under /api/v1/: objects, the OpenAPI schema and its docs page (served offline, CSP-clean).

Every endpoint and who may call it is listed in the view modules' docstrings; access always goes through
``panel.accounts.scoping``. Feature apps add actions to the inventory viewsets and their own collections through
``panel.extensions`` (read when the URLs load, after every app's ``ready()``).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path, re_path, reverse
from django.utils.html import format_html
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import SimpleRouter

from panel import extensions
from panel.accounts.api.views import ApiTokenViewSet, InvitationViewSet, OrganizationViewSet
from panel.inventory.api.views import EnvironmentViewSet, ProjectViewSet, ServerViewSet
from panel.jobs.api.views import JobViewSet

app_name = "api"

DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="{favicon}">
<link rel="stylesheet" href="{css}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{bundle}"></script>
<script src="{preset}"></script>
<script src="{init}"></script>
</body>
</html>
"""


class ApiDocsView(SpectacularSwaggerSplitView):
    """Swagger UI from the bundled sidecar assets; the init script is its own URL (no inline script or style)."""

    url_name = "api:schema"

    @extend_schema(exclude=True)
    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if request.GET.get("script") is not None:
            return super().get(request, *args, **kwargs)
        page = format_html(
            DOCS_PAGE,
            title=self.title or "API",
            favicon=self._swagger_ui_favicon(),
            css=self._swagger_ui_resource("swagger-ui.css"),
            bundle=self._swagger_ui_resource("swagger-ui-bundle.js"),
            preset=self._swagger_ui_resource("swagger-ui-standalone-preset.js"),
            init=f"{reverse('api:docs')}?script=",
        )
        return HttpResponse(page, content_type="text/html; charset=utf-8")

    @extend_schema(exclude=True)
    def options(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:  # type: ignore[override]
        """The allowed methods, no body (DRF would render its metadata with the page's template renderer: a 500)."""
        return HttpResponse(headers={"Allow": ", ".join(self.allowed_methods), "Content-Length": "0"})


router = SimpleRouter()
router.register("organizations", OrganizationViewSet, basename="organization")
router.register("servers", extensions.viewset("server", ServerViewSet), basename="server")
router.register("projects", extensions.viewset("project", ProjectViewSet), basename="project")
router.register("environments", extensions.viewset("environment", EnvironmentViewSet), basename="environment")
for prefix, viewset, basename in extensions.api_routes():
    router.register(prefix, viewset, basename=basename)
router.register("jobs", JobViewSet, basename="job")
router.register("tokens", ApiTokenViewSet, basename="token")
router.register("invitations", InvitationViewSet, basename="invitation")


@csrf_exempt  # a 404 for any method: nothing happens here, so no CSRF refusal page either
def not_found(request: HttpRequest, path: str) -> JsonResponse:
    """Any other path under /api/v1/: the API's own 404 body, not the HTML page."""
    return JsonResponse({"detail": "Not found."}, status=404)


urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", ApiDocsView.as_view(), name="docs"),
    *router.urls,
    re_path(r"^(?P<path>.*)$", not_found),
]
