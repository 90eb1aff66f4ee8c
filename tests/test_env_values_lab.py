"""Env var and secret values reach the container byte for byte, and values compose cannot carry are refused.

The quoting is checked against the real ``docker compose config`` (the compose v2 plugin the lab installs), and the
round trip against a real deploy of the sample project on the lab: ``printenv`` inside the odoo container.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from deployments.pipeline import compose_file_text, env_file_text, render_override
from panel.inventory.models import Environment
from tests.conftest import PASSWORD
from tests.deploy_fixtures import COMPOSE, deploy, log_text
from tests.lab.lab import docker_cli, ensure_compose_plugin

# Every kind of character a value may hold: backslashes (alone, doubled, before quotes and letters, at the end),
# both quotes, '$' in every spelling compose or a shell knows, tabs, '#', spaces at either end, '=' and non-ASCII
# (accents, CJK, an emoji, no-break space, NEL, LS/PS, BOM, zero-width space, C1 controls).
VALUES = {
    "BACKSLASH": "a\\b c\\\\d \\n \\t \\0101 \\x41 \\u00e9 \\$ end\\",
    "QUOTES": "it's \"double\" and 'single' \\\" \\' \"",
    "DOLLAR": "$HOME ${HOME} $$ $ ${X:-default} ${X} $(id) `id` $",
    "TABS_HASH": "\tbefore\tafter # not a comment #x\t",
    "SPACES": "  leading and trailing  ",
    "UNICODE": "é ü ß 日本語 😀 \u00a0nbsp \u0085nel \u2028ls \u2029ps \u200bzwsp \ufeffbom \x80\x9f",
    "EQUALS": "a=b==c=",
    "LONE_SINGLE_QUOTE": "'",
    "LONE_DOUBLE_QUOTE": '"',
    "LONE_BACKSLASH": "\\",
    "EMPTY": "",
    "ONE_SPACE": " ",
}


def compose_config(directory: Path, document: dict[str, Any], files: dict[str, str]) -> dict[str, str]:
    """The odoo service's environment as the real ``docker compose config`` resolves it."""
    ensure_compose_plugin()
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    (directory / "compose.yaml").write_text(compose_file_text(document), encoding="utf-8")
    result = subprocess.run(
        [docker_cli(), "compose", "-p", "quoting", "-f", str(directory / "compose.yaml"), "config", "--format", "json"],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    environment = json.loads(result.stdout.decode("utf-8"))["services"]["odoo"]["environment"]
    # `config` prints a file compose can read again, so it writes every '$' of a value as '$$'.
    return {name: value.replace("$$", "$") for name, value in environment.items()}


def test_it_writes_env_files_and_the_override_so_compose_reads_every_value_back(tmp_path: Path) -> None:
    secrets = {f"PANEL_S_{name}": value for name, value in VALUES.items()}
    env_vars = {f"PANEL_V_{name}": value for name, value in VALUES.items()}
    environment = Environment(compose_project="quoting", env_vars=env_vars)
    override = render_override(environment, "0" * 40, ["odoo"], [])
    document = {"services": {"odoo": {**override["services"]["odoo"], "image": "busybox", "env_file": ["odoo.env"]}}}
    seen = compose_config(tmp_path, document, {"odoo.env": env_file_text(secrets)})
    for name, value in {**secrets, **env_vars}.items():
        assert seen[name] == value, name


def test_it_uses_double_quotes_because_single_quotes_keep_doubled_backslashes(tmp_path: Path) -> None:
    """Why the old single-quoted env files doubled backslashes: compose-go does not unescape ``\\\\`` there."""
    document = {"services": {"odoo": {"image": "busybox", "env_file": ["odoo.env"]}}}
    seen = compose_config(tmp_path, document, {"odoo.env": "OLD='a\\\\b'\n" + env_file_text({"NEW": "a\\b"})})
    assert seen == {"OLD": "a\\\\b", "NEW": "a\\b"}


@pytest.mark.django_db
def test_it_refuses_values_compose_cannot_carry_with_a_400(inventory: dict[str, Any], users: dict[str, Any]) -> None:
    client = APIClient()
    client.force_authenticate(users["alice"])
    url = f"/api/v1/environments/{inventory['env_a'].pk}/"
    refused = {
        "a\nb": "one line",
        "a\rb": "one line",
        "a\x00b": "nul",  # "NUL character" (env_vars), DRF's "Null characters are not allowed." (secrets)
        "a\x1b[31mb": "u+001b",
        "a\x7fb": "u+007f",
        "x" * 4097: "4096",
    }
    for value, why in refused.items():
        for field in ("env_vars", "secrets"):
            response = client.patch(url, {field: {"NAME": value}}, format="json")
            assert response.status_code == 400, (field, value)
            assert why in json.dumps(response.json()).lower(), (field, response.json())
    # A lone surrogate is not text (no UTF-8 form): refused while the body is read.
    for field in ("env_vars", "secrets"):
        response = client.patch(url, f'{{"{field}": {{"NAME": "a\\ud800b"}}}}', content_type="application/json")
        assert response.status_code == 400
        assert "surrogate" in response.json()[field][0]
    environment = Environment.objects.get(pk=inventory["env_a"].pk)
    assert environment.env_vars == {} and environment.get_secrets() == {}
    # Everything else is stored as given.
    response = client.patch(
        url, {"env_vars": VALUES, "secrets": {f"S_{k}": v for k, v in VALUES.items()}}, format="json"
    )
    assert response.status_code == 200, response.json()
    environment.refresh_from_db()
    assert environment.env_vars == VALUES
    assert environment.get_secrets() == {f"S_{k}": v for k, v in VALUES.items()}


@pytest.mark.django_db
def test_it_shows_a_form_error_for_a_value_compose_cannot_carry(
    inventory: dict[str, Any], users: dict[str, Any]
) -> None:
    client = Client()
    assert client.login(username="alice", password=PASSWORD)
    environment = inventory["env_a"]
    url = f"/environments/{environment.pk}/edit/"
    form = {"kind": environment.kind, "git_ref": "main", "compose_files_text": "prod.yaml", "workers": "2",
            "cron_threads": "1", "backup_keep_daily": "7"}  # fmt: skip
    for text, why in [("A=x\ry", "one line"), ("A=x\x1by", "U+001B"), ("A=x\x7f", "U+007F")]:
        for field in ("env_vars_text", "secrets_text"):
            response = client.post(url, {**form, field: text})
            assert response.status_code == 200, (field, text)
            assert why in response.content.decode(), (field, text)
    environment.refresh_from_db()
    assert environment.env_vars == {} and environment.get_secrets() == {}
    # The form keeps every character after the first '=', spaces at either end included (browsers send CRLF).
    secrets = {f"S_{name}": value for name, value in VALUES.items()}
    response = client.post(
        url,
        {
            **form,
            "env_vars_text": "\r\n".join(f"{name}={value}" for name, value in VALUES.items()),
            "secrets_text": "\r\n".join(f"{name}={value}" for name, value in secrets.items()),
        },
    )
    assert response.status_code == 302, re.findall(r'class="errorlist[^>]*>(.*?)</ul>', response.content.decode(), re.S)
    environment.refresh_from_db()
    assert environment.env_vars == VALUES
    assert environment.get_secrets() == secrets


def printenv(host: Any, name: str) -> bytes:
    """``printenv NAME`` in the odoo container, as bytes (no decoding on the way)."""
    result = subprocess.run(
        host.ssh_argv(*COMPOSE, "exec", "-T", "odoo", "printenv", name),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (name, result.stderr)
    return result.stdout


@pytest.mark.lab
@pytest.mark.django_db(transaction=True)
def test_it_hands_every_value_to_the_container_byte_for_byte(deploy_env: Environment, lab1: Any, users: Any) -> None:
    client = APIClient()
    client.force_authenticate(users["alice"])
    env_vars = {f"PANEL_V_{name}": value for name, value in VALUES.items()}
    secrets = {f"PANEL_S_{name}": value for name, value in VALUES.items()}
    # A secret Doodba writes into odoo.conf: Odoo must still start with it.
    secrets["ADMIN_PASSWORD"] = "pa\\ss 'w\"o$rd\\ #x\t😀 "
    response = client.patch(
        f"/api/v1/environments/{deploy_env.pk}/", {"env_vars": env_vars, "secrets": secrets}, format="json"
    )
    assert response.status_code == 200, response.json()
    deploy_env.refresh_from_db()
    deployment = deploy(deploy_env, users["alice"])
    assert deployment.job.status == "succeeded", deployment.job.reason + log_text(deployment)[-3000:]
    for name, value in {**env_vars, **secrets}.items():
        assert printenv(lab1, name) == value.encode() + b"\n", name
