"""What Prepare server says when something is missing, and which networks it reads from compose's output.

The lab hosts cannot show a missing compose plugin (the plugin is installed machine-wide) or a login with sudo
(this machine has no sudo): these paths are checked here on the functions that decide them, fed what ``probe``
reads on such servers. The lab tests (``test_prepare_lab.py``) cover the real no-sudo detection and Docker access.
"""

from __future__ import annotations

import pytest

from deployments import pipeline
from panel.inventory import prepare
from panel.inventory.prepare import PrepareFailed, Tools, advice, external_networks, install_argv, plan

READY = {"docker_version": "27.5.1", "compose_version": "2.40.3", "git_version": "2.39.5"}


def test_it_says_what_debian_bookworm_lacks_and_where_compose_v2_comes_from() -> None:
    tools = Tools(**{**READY, "compose_version": ""}, uid=1000, sudo=False, os_id="debian", os_codename="bookworm")
    result = plan(tools, "deploy")
    assert result.packages == []  # bookworm's docker-compose is v1: nothing to apt-get
    text = advice(tools, result, "deploy")
    assert text.startswith("Missing on the server: the docker compose v2 plugin.")
    assert "Debian bookworm has no package of docker compose v2" in text
    assert "docker-compose-plugin packages from download.docker.com" in text
    assert "/usr/local/lib/docker/cli-plugins/docker-compose" in text


def test_it_gives_the_exact_commands_when_the_login_may_not_install() -> None:
    tools = Tools(docker_installed=False, docker_problem="Docker is not installed on the server.", git_version="",
                  uid=1000, sudo=False, os_id="ubuntu", os_codename="noble")  # fmt: skip
    result = plan(tools, "deploy")
    assert result.packages == ["docker.io", "docker-compose-v2", "git"]
    text = advice(tools, result, "deploy")
    assert "deploy is not root and has no passwordless sudo (sudo -n true failed)" in text
    assert "sudo apt-get update && sudo apt-get install -y docker.io docker-compose-v2 git." in text


def test_it_offers_to_install_with_passwordless_sudo_and_runs_apt_through_sudo_n() -> None:
    tools = Tools(**{**READY, "git_version": ""}, uid=1000, sudo=True, os_id="debian", os_codename="trixie")
    result = plan(tools, "deploy")
    assert result.packages == ["git"]
    assert "The panel can install git (deploy has passwordless sudo)" in advice(tools, result, "deploy")
    assert install_argv(tools, result.packages)[-1][:2] == ["sudo", "-n"]
    root = Tools(**{**READY, "git_version": ""}, uid=0, os_id="debian")
    assert install_argv(root, ["git"])[-1][0] == "env"  # root: no sudo
    assert plan(root, "root").commands(root) == ["apt-get update", "apt-get install -y git"]


def test_it_installs_nothing_on_a_distribution_it_does_not_know() -> None:
    tools = Tools(**{**READY, "git_version": ""}, uid=0, os_id="fedora")
    result = plan(tools, "root")
    assert result.packages == []
    assert "package manager of fedora" in advice(tools, result, "root")


def test_it_reads_external_networks_by_their_name_from_compose_config() -> None:
    config = {
        "networks": {
            "default": {"name": "panel-demo-16-0-test_default", "internal": True},
            "globalwhitelist_shared": {"name": "globalwhitelist_shared", "external": True},
            "proxy": {"name": "inverseproxy_shared", "external": True},
        }
    }
    assert external_networks(config) == ["globalwhitelist_shared", "inverseproxy_shared"]
    assert external_networks({"services": {}}) == []


@pytest.mark.parametrize("name", ["bad name", "x;rm -rf /", "-rm", "", "a" * 200])
def test_it_refuses_an_external_network_name_docker_would_not_take(name: str) -> None:
    config = {"networks": {"shared": {"name": name or 5, "external": True}}}
    with pytest.raises(PrepareFailed, match="not a name Docker accepts"):
        external_networks(config)


def test_it_reads_the_same_override_file_the_deploys_write() -> None:
    assert prepare.OVERRIDE_FILE == pipeline.OVERRIDE_FILE
