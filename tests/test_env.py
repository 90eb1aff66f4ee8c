"""Settings come from environment variables; a wrong value stops the panel with a message naming the variable."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from panel.env import envbool, envchoice, envint


def test_a_choice_setting_takes_its_default_or_an_allowed_value(monkeypatch) -> None:
    monkeypatch.delenv("DEPLOY_DB_SNAPSHOT", raising=False)
    assert envchoice("DEPLOY_DB_SNAPSHOT", "production", ("production", "always", "never")) == "production"
    monkeypatch.setenv("DEPLOY_DB_SNAPSHOT", " Never ")
    assert envchoice("DEPLOY_DB_SNAPSHOT", "production", ("production", "always", "never")) == "never"


def test_a_wrong_value_names_the_variable_and_what_it_accepts(monkeypatch) -> None:
    monkeypatch.setenv("DEPLOY_DB_SNAPSHOT", "sometimes")
    with pytest.raises(ImproperlyConfigured, match="DEPLOY_DB_SNAPSHOT must be one of production, always, never"):
        envchoice("DEPLOY_DB_SNAPSHOT", "production", ("production", "always", "never"))
    monkeypatch.setenv("PANEL_HTTPS", "maybe")
    with pytest.raises(ImproperlyConfigured, match="PANEL_HTTPS must be a boolean"):
        envbool("PANEL_HTTPS", False)
    monkeypatch.setenv("DEPLOY_DB_SNAPSHOT_KEEP", "0")
    with pytest.raises(ImproperlyConfigured, match="DEPLOY_DB_SNAPSHOT_KEEP must be at least 1"):
        envint("DEPLOY_DB_SNAPSHOT_KEEP", 3, minimum=1)
