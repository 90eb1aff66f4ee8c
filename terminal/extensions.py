"""What the terminal adds to the panel through ``panel.extensions``, registered in ``TerminalConfig.ready()``."""

from __future__ import annotations

from typing import Any

from panel.extensions import Contribution, Page
from terminal.services import may_open_terminal


class EnvironmentTerminal(Contribution):
    """The *Terminal* button of the environment page (owners and operators, where the organization allows it), the
    terminal's pages (``terminal.urls``) and its websocket (``terminal.ws_urls``)."""

    name = "terminal.environment"
    model = "environment"
    order = 400
    templates = {"actions": "terminal/_terminal_action.html"}
    html_urls = "terminal.urls"
    websocket_urls = "terminal.ws_urls"

    def context(self, page: Page) -> dict[str, Any]:
        visible = page.may_change and may_open_terminal(page.request.user, page.obj)
        return {"terminal_visible": visible}


def contributions() -> list[Contribution]:
    """The contributions ``TerminalConfig.ready()`` registers."""
    return [EnvironmentTerminal()]
