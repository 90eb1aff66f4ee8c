"""Re-encrypt every stored secret with the first key of PANEL_ENCRYPTION_KEYS."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand
from django.db import connection, transaction

from panel.crypto import EncryptedTextField, rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt all secrets with the primary (first) key. Rotation: put a new key first in "
        "PANEL_ENCRYPTION_KEYS, keep the old ones after it, run this command, then remove the old keys."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        rows = 0
        quote = connection.ops.quote_name
        with transaction.atomic(), connection.cursor() as cursor:
            for model in apps.get_models():
                columns = [f.column for f in model._meta.concrete_fields if isinstance(f, EncryptedTextField)]
                if not columns:
                    continue
                table = quote(model._meta.db_table)
                pk = quote(model._meta.pk.column)
                # Raw SQL on purpose: the ciphertext is rotated without ever being decrypted into model objects.
                cursor.execute(f"SELECT {pk}, {', '.join(map(quote, columns))} FROM {table}")  # noqa: S608
                for pk_value, *values in cursor.fetchall():
                    updates = {column: rotate(value) for column, value in zip(columns, values, strict=True) if value}
                    if not updates:
                        continue
                    assignments = ", ".join(f"{quote(column)} = %s" for column in updates)
                    cursor.execute(
                        f"UPDATE {table} SET {assignments} WHERE {pk} = %s",  # noqa: S608
                        [*updates.values(), pk_value],
                    )
                    rows += 1
        self.stdout.write(f"Re-encrypted the secrets of {rows} rows with the primary key.")
