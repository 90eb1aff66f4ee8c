"""pytest plugin: the lab hosts as fixtures (loaded by ``tests/conftest.py``).

* ``lab`` (session): ``ensure_up()`` once per session; fails (never skips) with what to install when the
  machine lacks something. Returns ``tests.lab.lab.Lab``: ``hosts``, ``sample_repo_path``,
  ``client_key_path``, ``known_hosts_path``, ``commit_to_sample(files, message)``, ``reset_sample()``.
* ``lab1`` / ``lab2`` (function): the ``LabHost`` objects, put back in their normal state after the test
  (sshd resumed and running with its original host key, dockerd running), so a test that breaks a host
  never leaks the breakage into the next one.
* ``lab_hosts_held`` (function): the ``Lab``, with the hosts held exclusively for the test across pytest
  processes (several sessions may share the lab; one session's fault test must not hit another's test).
  ``lab1``, ``lab2`` and ``lab_sample`` use it.
* ``lab_sample`` (function): the ``Lab`` with the sample repository reset to its pristine ``main``
  after the test.

The daemons keep running after the session (the next run then takes seconds); stop them with
``python3 -m tests.lab.lab down``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lab.lab import Lab, LabError, LabHost, ensure_up, exclusive_use

__all__ = ["Lab", "LabHost", "lab", "lab1", "lab2", "lab_hosts_held", "lab_sample"]


@pytest.fixture(scope="session")
def lab() -> Lab:
    """The running lab (started/built on demand)."""
    try:
        return ensure_up()
    except LabError as exc:
        pytest.fail(f"the lab could not start: {exc}", pytrace=False)


@pytest.fixture
def lab_hosts_held(lab: Lab) -> Iterator[Lab]:
    """Hold the lab hosts for this test, across pytest processes (see ``exclusive_use``)."""
    try:
        with exclusive_use():
            yield lab
    except LabError as exc:
        pytest.fail(str(exc), pytrace=False)


def _restoring(host: LabHost) -> Iterator[LabHost]:
    try:
        yield host
    finally:
        host.reset()


@pytest.fixture
def lab1(lab_hosts_held: Lab) -> Iterator[LabHost]:
    """Lab host ``lab1`` (127.0.0.11:2222, users ``lab1-deploy`` and ``lab1-nodocker``), reset after the test."""
    yield from _restoring(lab_hosts_held.hosts["lab1"])


@pytest.fixture
def lab2(lab_hosts_held: Lab) -> Iterator[LabHost]:
    """Lab host ``lab2`` (127.0.0.12:2222, user ``lab2-deploy``), reset after the test."""
    yield from _restoring(lab_hosts_held.hosts["lab2"])


@pytest.fixture
def lab_sample(lab_hosts_held: Lab) -> Iterator[Lab]:
    """The lab, with the sample repo's ``main`` reset to the pristine commit after the test."""
    try:
        yield lab_hosts_held
    finally:
        lab_hosts_held.reset_sample()
