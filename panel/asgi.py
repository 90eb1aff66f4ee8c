"""ASGI entry point: Django for HTTP, Channels for websockets (Origin check, then session auth)."""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlsplit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "panel.settings")

from panel.streamed_body import get_asgi_application

# Django's handler, except that the registered upload paths get their body as a stream (panel.streamed_body).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import WebsocketDenier  # noqa: E402
from django.conf import settings  # noqa: E402
from django.http.request import split_domain_port, validate_host  # noqa: E402

from panel.routing import websocket_urlpatterns  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]


def parse_origin(value: str, *, configured: bool = False) -> Origin | None:
    """``(scheme, host, port)`` of an http(s) origin, the port made explicit; None for anything else.

    A browser's ``Origin`` is exactly ``scheme://host[:port]``; a configured origin may end with ``/``.
    """
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if (
        scheme not in DEFAULT_PORTS
        or not parts.hostname
        or parts.path not in (("", "/") if configured else ("",))
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        return None
    return scheme, parts.hostname.lower(), DEFAULT_PORTS[scheme] if port is None else port


def request_scheme(scope: dict[str, Any], headers: dict[bytes, bytes]) -> str:
    """The scheme of the page that may open this socket: the socket's own (ws → http, wss → https).

    Behind a proxy (``PANEL_BEHIND_PROXY``, i.e. ``SECURE_PROXY_SSL_HEADER``) the forwarded protocol decides, as
    Django decides for CSRF; ``wss`` counts as ``https`` there, as some proxies send it for websockets.
    """
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        name, secure_value = proxy_header
        forwarded = headers.get(name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin1"))
        if forwarded is not None:
            value = forwarded.decode("latin1").split(",", 1)[0].strip().lower()
            return "https" if value in (secure_value.lower(), "wss") else "http"
    return "https" if scope.get("scheme") == "wss" else "http"


def allowed_origins(scope: dict[str, Any], headers: dict[bytes, bytes]) -> list[Origin]:
    """The panel's own origin as this request reaches it (if its Host is allowed), then the trusted ones."""
    origins: list[Origin] = []
    domain, port = split_domain_port(headers.get(b"host", b"").decode("latin1"))
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = [".localhost", "127.0.0.1", "[::1]"]
    if domain and validate_host(domain, allowed_hosts):
        scheme = request_scheme(scope, headers)
        own = parse_origin(f"{scheme}://{domain}" + (f":{port}" if port else ""))
        if own is not None:
            origins.append(own)
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        parsed = parse_origin(trusted, configured=True)
        if parsed is not None:
            origins.append(parsed)
    return origins


def origin_matches(origin: Origin, allowed: Origin) -> bool:
    """Same scheme, host and port; a trusted ``https://*.example.com`` covers the domain and its subdomains."""
    scheme, host, port = origin
    allowed_scheme, allowed_host, allowed_port = allowed
    if scheme != allowed_scheme or port != allowed_port:
        return False
    if allowed_host.startswith("*."):
        suffix = allowed_host[1:]
        return host == suffix[1:] or host.endswith(suffix)
    return host == allowed_host


class OriginValidator:
    """Opens a websocket only for a page of the panel's own origin: scheme, host and port all count.

    Channels' ``AllowedHostsOriginValidator`` compares the host alone, so a page on another port or scheme of an
    allowed host (any service on 127.0.0.1, plain http beside https) could ride a user's session cookie. A
    missing Origin is refused too: browsers always send one, and a non-browser client holding a session cookie is
    exactly what this check is for (such a client can send the panel's origin). Refused sockets are closed before
    they are accepted, so they never see data.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket":
            headers = {name.lower(): value for name, value in scope.get("headers", [])}
            raw = headers.get(b"origin")
            origin = parse_origin(raw.decode("latin1")) if raw is not None else None
            if origin is None or not any(origin_matches(origin, ok) for ok in allowed_origins(scope, headers)):
                logger.warning(
                    "websocket refused: origin %r for host %r",
                    (raw or b"").decode("latin1")[:200],
                    headers.get(b"host", b"").decode("latin1")[:200],
                )
                return await WebsocketDenier.as_asgi()(scope, receive, send)
        return await self.application(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": OriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
