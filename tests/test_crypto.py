"""Secrets at rest: encrypted in the database, and rotatable to a new key."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection

from panel import crypto
from panel.inventory.models import Environment, Server


def raw(table: str, column: str, pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


@pytest.fixture
def reset_keys():
    crypto.reset_key_cache()
    yield
    crypto.reset_key_cache()


def test_it_stores_keys_and_secrets_encrypted(inventory) -> None:
    server: Server = inventory["server_a"]
    environment: Environment = inventory["env_a"]
    environment.set_secrets({"ADMIN_PASSWORD": "s3cr3t-admin-pw"})
    environment.save()
    assert "PRIVATE KEY" not in raw("inventory_server", "private_key", server.pk)
    assert "s3cr3t-admin-pw" not in raw("inventory_environment", "secrets", environment.pk)
    assert Server.objects.get(pk=server.pk).private_key == server.private_key
    assert Environment.objects.get(pk=environment.pk).get_secrets() == {"ADMIN_PASSWORD": "s3cr3t-admin-pw"}


def test_it_rotates_every_secret_to_a_new_key(inventory, settings, reset_keys) -> None:
    environment: Environment = inventory["env_a"]
    environment.set_secrets({"PGPASSWORD": "pg-pass"})
    environment.save()
    old_key = settings.PANEL_ENCRYPTION_KEYS[0]
    new_key = Fernet.generate_key().decode()
    settings.PANEL_ENCRYPTION_KEYS = [new_key, old_key]
    crypto.reset_key_cache()
    call_command("rotate_encryption_keys")
    # Only the new key remains: everything still decrypts.
    settings.PANEL_ENCRYPTION_KEYS = [new_key]
    crypto.reset_key_cache()
    assert Environment.objects.get(pk=environment.pk).get_secrets() == {"PGPASSWORD": "pg-pass"}
    assert "PRIVATE KEY" in Server.objects.get(pk=inventory["server_a"].pk).private_key
    token = raw("inventory_environment", "secrets", environment.pk)
    assert Fernet(new_key.encode()).decrypt(token.encode())
