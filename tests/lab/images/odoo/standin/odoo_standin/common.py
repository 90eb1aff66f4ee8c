"""Shared parts of the Odoo stand-in: logging, config, database, addons, module states.

Only the standard library and psycopg2 (Debian's python3-psycopg2) are used.
"""

from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import psycopg2
import psycopg2.extensions

SERVER_VERSION = "16.0"
SERVER_VERSION_INFO = [16, 0, 0, "final", 0, ""]
SERVER_SERIE = "16.0"
PROTOCOL_VERSION = 1
DATA_DIR = Path(os.environ.get("ODOO_DATA_DIR", "/var/lib/odoo"))
CONFIG_FILE = Path(os.environ.get("OPENERP_SERVER", "/opt/odoo/auto/odoo.conf"))
#: Commands the entrypoint waits for the database server before running.
DB_COMMANDS = {"odoo", "click-odoo-update", "click-odoo-backupdb", "click-odoo-restoredb"}
PARAM_INSTALLED_CHECKSUMS = "module_auto_update.installed_checksums"
DEFAULT_EXCLUDE_PATTERNS = "*.pyc,*.pyo,i18n/*.pot,i18n_extra/*.pot,static/*,tests/*"

_current_db = "?"


class OdooFormatter(logging.Formatter):
    """Odoo's log format: ``2026-01-01 12:00:00,000 1 INFO prod odoo.modules.loading: message``."""

    def format(self, record: logging.LogRecord) -> str:
        record.pid = os.getpid()
        record.dbname = getattr(record, "dbname", None) or _current_db
        return super().format(record)


def setup_logging() -> None:
    """Odoo-style log lines on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(OdooFormatter("%(asctime)s %(pid)s %(levelname)s %(dbname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper() if os.environ.get("LOG_LEVEL") else logging.INFO)


def set_current_db(name: str | None) -> None:
    """The database name shown in log lines."""
    global _current_db
    _current_db = name or "?"


def get_logger(name: str) -> logging.Logger:
    """A logger (logging configured on first use)."""
    if not logging.getLogger().handlers:
        setup_logging()
    return logging.getLogger(name)


def env_bool(name: str, default: bool = False) -> bool:
    """Boolean environment variable the way Doodba reads them."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def write_config_file() -> None:
    """Regenerate odoo.conf from the environment at each start (as Doodba does); best effort."""
    lines = [
        "[options]",
        f"addons_path = {os.environ.get('ODOO_ADDONS_PATH', '')}",
        f"admin_passwd = {os.environ.get('ADMIN_PASSWORD', 'admin')}",
        f"data_dir = {DATA_DIR}",
        f"db_host = {os.environ.get('PGHOST', 'db')}",
        f"db_port = {os.environ.get('PGPORT', '5432')}",
        f"db_user = {os.environ.get('PGUSER', 'odoo')}",
        f"db_password = {os.environ.get('PGPASSWORD', '')}",
        f"dbfilter = {os.environ.get('DB_FILTER', '.*')}",
        f"list_db = {os.environ.get('LIST_DB', 'false')}",
        f"proxy_mode = {os.environ.get('PROXY_MODE', 'false')}",
        f"without_demo = {os.environ.get('WITHOUT_DEMO', 'all')}",
        f"smtp_server = {os.environ.get('SMTP_SERVER', 'smtp')}",
        "",
    ]
    try:
        CONFIG_FILE.parent.mkdir(parents=True, exist_ok=True)
        CONFIG_FILE.write_text("\n".join(lines))
    except OSError:
        pass


# -- database --------------------------------------------------------------------------------------


def connect(dbname: str | None = None, autocommit: bool = True, timeout: int = 5) -> psycopg2.extensions.connection:
    """Connect with the PG* environment (``dbname`` None: the maintenance database ``postgres``)."""
    conn = psycopg2.connect(
        host=os.environ.get("PGHOST", "db"),
        port=os.environ.get("PGPORT", "5432"),
        user=os.environ.get("PGUSER", "odoo"),
        password=os.environ.get("PGPASSWORD", ""),
        dbname=dbname or "postgres",
        connect_timeout=timeout,
    )
    conn.autocommit = autocommit
    return conn


def wait_for_db_server(timeout: float = 60) -> None:
    """Doodba's WAIT_DB: wait until PostgreSQL accepts connections."""
    logger = get_logger("doodba.wait-db")
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        try:
            connect(timeout=2).close()
            return
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                logger.error("Database server not ready after %ss: %s", timeout, str(exc).strip())
                return
            if not announced:
                logger.info("Waiting until postgres is listening at %s...", os.environ.get("PGHOST", "db"))
                announced = True
            time.sleep(1)


def db_exists(dbname: str) -> bool:
    """True when the database exists."""
    with connect() as conn, conn.cursor() as cr:
        cr.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
        return cr.fetchone() is not None


def is_initialized(cr: psycopg2.extensions.cursor) -> bool:
    """Odoo's check: does the database have ``ir_module_module``?"""
    cr.execute("SELECT 1 FROM information_schema.tables WHERE table_name = 'ir_module_module'")
    return cr.fetchone() is not None


def get_param(cr: psycopg2.extensions.cursor, key: str, default: str | None = None) -> str | None:
    """``ir.config_parameter`` value."""
    cr.execute("SELECT value FROM ir_config_parameter WHERE key = %s", (key,))
    row = cr.fetchone()
    return row[0] if row else default


def set_param(cr: psycopg2.extensions.cursor, key: str, value: str) -> None:
    """Create or update an ``ir.config_parameter``."""
    cr.execute(
        "INSERT INTO ir_config_parameter (key, value, create_date, write_date) "
        "VALUES (%s, %s, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC') "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, write_date = EXCLUDED.write_date",
        (key, value),
    )


# -- addons ----------------------------------------------------------------------------------------


def addons_paths() -> list[Path]:
    """The addons path (core stand-in addons + Doodba's /opt/odoo/auto/addons)."""
    raw = os.environ.get("ODOO_ADDONS_PATH", "/opt/odoo/standin/core_addons,/opt/odoo/auto/addons")
    return [Path(p) for p in raw.split(",") if p]


def module_path(name: str) -> Path | None:
    """Directory of an addon in the addons path."""
    for root in addons_paths():
        candidate = root / name
        if (candidate / "__manifest__.py").is_file():
            return candidate
    return None


def all_modules() -> list[str]:
    """Every addon found in the addons path."""
    names: set[str] = set()
    for root in addons_paths():
        if root.is_dir():
            names.update(p.parent.name for p in root.glob("*/__manifest__.py"))
    return sorted(names)


def get_manifest(name: str) -> dict | None:
    """The manifest of an addon (None when absent or unreadable)."""
    path = module_path(name)
    if not path:
        return None
    try:
        data = ast.literal_eval((path / "__manifest__.py").read_text())
    except (SyntaxError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def adapt_version(version: str) -> str:
    """Odoo prefixes manifest versions with the series (``1.0`` -> ``16.0.1.0``)."""
    if version == SERVER_SERIE or not version.startswith(SERVER_SERIE + "."):
        version = f"{SERVER_SERIE}.{version}"
    return version


def addon_hash(top: Path, exclude_patterns: list[str], keep_langs: list[str]) -> str:
    """Content hash of an addon directory, like click-odoo-contrib's ``_addon_hash``."""
    digest = hashlib.sha1()
    for root, dirs, files in os.walk(top, followlinks=True):
        dirs.sort()
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for filename in sorted(files):
            path = Path(root) / filename
            rel = path.relative_to(top).as_posix()
            if any(fnmatch.fnmatch(rel, pattern) for pattern in exclude_patterns):
                continue
            if rel.startswith(("i18n/", "i18n_extra/")) and rel.endswith(".po"):
                lang = Path(rel).stem
                if keep_langs and lang not in keep_langs and lang.split("_")[0] not in keep_langs:
                    continue
            digest.update(rel.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def checksum_dir(cr: psycopg2.extensions.cursor, name: str) -> str | bool:
    """Hash of an installed module's directory (False when its directory is gone)."""
    patterns = (get_param(cr, "module_auto_update.exclude_patterns") or DEFAULT_EXCLUDE_PATTERNS).split(",")
    cr.execute("SELECT code FROM res_lang WHERE active")
    keep_langs = [row[0] for row in cr.fetchall()]
    path = module_path(name)
    return addon_hash(path, [p.strip() for p in patterns], keep_langs) if path else False


def save_installed_checksums(cr: psycopg2.extensions.cursor, ignore: set[str] | None = None) -> None:
    """Store the hash of every installed module (what click-odoo-update compares against)."""
    checksums = {}
    cr.execute("SELECT name FROM ir_module_module WHERE state = 'installed' ORDER BY name")
    for (name,) in cr.fetchall():
        if ignore and name in ignore:
            continue
        checksums[name] = checksum_dir(cr, name)
    set_param(cr, PARAM_INSTALLED_CHECKSUMS, json.dumps(checksums))
    get_logger("click_odoo_contrib.update").info("Database updated, new checksums stored")


def load_installed_checksums(cr: psycopg2.extensions.cursor) -> dict[str, str]:
    """Stored module hashes ({} for a database click-odoo-update never saw)."""
    value = get_param(cr, PARAM_INSTALLED_CHECKSUMS)
    return json.loads(value) if value else {}
