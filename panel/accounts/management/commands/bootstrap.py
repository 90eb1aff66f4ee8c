"""Create the first owner on a fresh install and print the login once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from panel.accounts.services import bootstrap_admin


class Command(BaseCommand):
    help = "On a fresh install, create the first owner with a random password and print the login."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--organization", default="Hosting")
        parser.add_argument("--url", default="http://127.0.0.1:8000/")

    def handle(self, *args: Any, **options: Any) -> None:
        created = bootstrap_admin(username=options["username"], organization_name=options["organization"])
        if created is None:
            self.stdout.write(f"Log in at {options['url']} with your existing account.")
            return
        user, password = created
        self.stdout.write(
            f"First login: {options['url']}login/  user: {user.get_username()}  password: {password}\n"
            "(shown once; change it after logging in)"
        )
