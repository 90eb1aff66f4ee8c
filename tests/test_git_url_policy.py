"""The SSRF policy for git remotes (PANEL_BLOCK_PRIVATE_GIT_HOSTS)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from panel.validators import validate_git_url

REFUSED = [
    "/srv/git/project.git",
    "ssh://git@127.0.0.1/project.git",
    "https://localhost/project.git",
    "git@10.1.2.3:team/project.git",
    "https://192.168.1.10/team/project.git",
    "git@169.254.169.254:latest/meta-data",
    "ssh://git@[::1]/project.git",
]


@pytest.mark.parametrize("url", REFUSED)
def test_it_refuses_private_targets_when_the_policy_is_on(url: str, settings) -> None:
    settings.PANEL_BLOCK_PRIVATE_GIT_HOSTS = True
    with pytest.raises(ValidationError):
        validate_git_url(url)


@pytest.mark.parametrize("url", REFUSED[:6])
def test_it_allows_them_when_the_policy_is_off(url: str, settings) -> None:
    settings.PANEL_BLOCK_PRIVATE_GIT_HOSTS = False
    validate_git_url(url)


def test_it_allows_a_public_address(settings) -> None:
    settings.PANEL_BLOCK_PRIVATE_GIT_HOSTS = True
    validate_git_url("git@140.82.112.3:team/project.git")  # an IP literal: nothing is resolved over the network
