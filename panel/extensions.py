"""The one extension point through which feature apps add to the pages and API of inventory objects.

``panel.inventory`` draws environments, projects and servers and serves their API; it imports no feature app
(``deployments``, ``backups``, ``monitoring``). Each feature app describes what it adds in a ``Contribution``
subclass and registers one instance in its ``AppConfig.ready()``. Like NetBox's ``PluginTemplateExtension``, a
contribution names the kind of object it extends (``model``) and may give:

- ``context(page)``: variables for its templates, merged into the page's context (a name another contribution or
  the page already uses is a programming error: ``ImproperlyConfigured``);
- ``templates``: a template (name or ``Template``) per slot of the page: ``"facts"`` (``<dt>``/``<dd>`` rows in the
  facts list), ``"actions"`` (buttons in the page head, next to *Edit*) and ``"sections"`` (blocks of the page body,
  after the facts);
- ``viewset_mixins``: ``GenericViewSet`` subclasses whose ``@action`` methods become routes of the object's API
  (``/api/v1/environments/{id}/deploy/``); ``get_object`` keeps its scoping (``change`` for a POST);
- ``serializer_fields()``: read-only fields added to the object's representation (``customer_fields``: those that
  customers see too);
- ``api_routes``: ``(prefix, viewset, basename)`` of the feature's own API collections, registered under
  ``/api/v1/``; ``html_urls``: the dotted path of its HTML URL module, included at the root;
  ``websocket_urls``: the dotted path of a module whose ``websocket_urlpatterns`` the ASGI router adds.

Everything is iterated in one defined order: ``(order, name)``, lower first. Deployments use order 100; backups and
monitoring should take 200 and 300 so that their sections follow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.template import Template

MODELS = ("environment", "project", "server")
SLOTS = ("facts", "actions", "sections")


@dataclass(frozen=True)
class Page:
    """What a contribution knows about the page being drawn: who asks, about what, and what they may do."""

    request: HttpRequest
    obj: Any
    show_details: bool
    may_change: bool
    context: Mapping[str, Any]


class Contribution:
    """What one feature app adds to one kind of inventory object (subclass it, register an instance)."""

    name: ClassVar[str] = ""
    model: ClassVar[str] = ""
    order: ClassVar[int] = 100
    templates: ClassVar[Mapping[str, str | Template]] = {}
    viewset_mixins: ClassVar[Sequence[type]] = ()
    customer_fields: ClassVar[Sequence[str]] = ()
    api_routes: ClassVar[Sequence[tuple[str, type, str]]] = ()
    html_urls: ClassVar[str] = ""
    websocket_urls: ClassVar[str] = ""

    def context(self, page: Page) -> dict[str, Any]:
        """Variables this contribution's templates use (called for every page view)."""
        return {}

    def serializer_fields(self) -> dict[str, Any]:
        """Fresh (unbound) serializer fields to add to the object's API representation."""
        return {}


_registry: dict[str, Contribution] = {}


def register(contribution: Contribution) -> None:
    """Add a contribution (from ``AppConfig.ready()``); a second one with the same name is refused."""
    if contribution.model not in MODELS:
        raise ImproperlyConfigured(f"Contribution {contribution.name!r}: model must be one of {', '.join(MODELS)}.")
    unknown = set(contribution.templates) - set(SLOTS)
    if unknown:
        raise ImproperlyConfigured(f"Contribution {contribution.name!r}: unknown slots {sorted(unknown)}.")
    if not contribution.name or contribution.name in _registry:
        raise ImproperlyConfigured(f"Contribution name {contribution.name!r} is empty or already registered.")
    _registry[contribution.name] = contribution


def unregister(name: str) -> None:
    """Remove a contribution (tests register their own and take it away again)."""
    _registry.pop(name, None)


def contributions(model: str | None = None) -> list[Contribution]:
    """The registered contributions (to ``model``, or all), in their defined order."""
    found = [c for c in _registry.values() if model is None or c.model == model]
    return sorted(found, key=lambda c: (c.order, c.name))


def page_context(
    model: str, request: HttpRequest, obj: Any, *, show_details: bool, may_change: bool, base: dict[str, Any]
) -> dict[str, Any]:
    """The page's ``base`` context plus every contribution's variables and, under ``extension_templates``, the
    templates of each slot in order."""
    page = Page(request=request, obj=obj, show_details=show_details, may_change=may_change, context=dict(base))
    context = dict(base)
    slots: dict[str, list[str | Template]] = {slot: [] for slot in SLOTS}
    for contribution in contributions(model):
        extra = contribution.context(page)
        clash = sorted(set(extra) & set(context))
        if clash:
            raise ImproperlyConfigured(f"Contribution {contribution.name!r} reuses page variables {clash}.")
        context.update(extra)
        for slot, template in contribution.templates.items():
            slots[slot].append(template)
    context["extension_templates"] = slots
    return context


def serializer_fields(model: str) -> dict[str, Any]:
    """The fields every contribution adds to ``model``'s API representation, in order (a name twice is refused)."""
    fields: dict[str, Any] = {}
    for contribution in contributions(model):
        extra = contribution.serializer_fields()
        clash = sorted(set(extra) & set(fields))
        if clash:
            raise ImproperlyConfigured(f"Contribution {contribution.name!r} reuses serializer fields {clash}.")
        fields.update(extra)
    return fields


def customer_fields(model: str) -> tuple[str, ...]:
    """The contributed fields that customers see too."""
    return tuple(name for contribution in contributions(model) for name in contribution.customer_fields)


def viewset(model: str, base: type) -> type:
    """``base`` with every contribution's viewset mixins in front (their actions become routes of the object).

    Built when the URLs are loaded (after every ``ready()``); the class keeps ``base``'s name and docstring, which
    the OpenAPI schema shows.
    """
    mixins = tuple(mixin for contribution in contributions(model) for mixin in contribution.viewset_mixins)
    if not mixins:
        return base
    namespace = {"__doc__": base.__doc__, "__module__": base.__module__, "__qualname__": base.__qualname__}
    return type(base.__name__, (*mixins, base), namespace)


def api_routes() -> list[tuple[str, type, str]]:
    """Every contribution's own API collections ``(prefix, viewset, basename)``, in order."""
    return [route for contribution in contributions() for route in contribution.api_routes]


def html_urls() -> list[str]:
    """The HTML URL modules of the contributions, in order (each appears once)."""
    return _modules("html_urls")


def websocket_urls() -> list[str]:
    """The websocket URL modules of the contributions, in order (each appears once)."""
    return _modules("websocket_urls")


def _modules(attribute: str) -> list[str]:
    modules: list[str] = []
    for contribution in contributions():
        module = getattr(contribution, attribute)
        if module and module not in modules:
            modules.append(module)
    return modules
