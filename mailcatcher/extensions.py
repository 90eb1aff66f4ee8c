"""What the mail catcher adds to the panel through ``panel.extensions``, registered in ``MailcatcherConfig.ready()``:
the *Mails* button of a staging, test or development environment's page (staff who see details), its HTML pages
(``mailcatcher.urls``) and its API routes (``mailcatcher.api``)."""

from __future__ import annotations

from typing import Any

from mailcatcher.api import EnvironmentMailActions
from mailcatcher.services import has_catcher_kind
from panel.extensions import Contribution, Page


class EnvironmentMails(Contribution):
    """The *Mails* button; production environments and customers never get it."""

    name = "mailcatcher.mails"
    model = "environment"
    order = 330
    templates = {"actions": "mailcatcher/_mails_action.html"}
    html_urls = "mailcatcher.urls"
    viewset_mixins = (EnvironmentMailActions,)

    def context(self, page: Page) -> dict[str, Any]:
        return {"mails_visible": page.show_details and has_catcher_kind(page.obj)}


def contributions() -> list[Contribution]:
    """The contributions ``MailcatcherConfig.ready()`` registers."""
    return [EnvironmentMails()]
