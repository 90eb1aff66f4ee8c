"""The ``odoo`` command of the stand-in.

* ``odoo [-d DB] [-i m1,m2] [-u m1|all] [--stop-after-init] [...]``: like Odoo 16, ``-i``/``-u`` create the
  database when missing, initialise it (stand-in tables ``ir_module_module``, ``ir_config_parameter``,
  ``ir_mail_server``, ``ir_cron``, ``ir_attachment``, ``res_lang``, ``res_users``) and install/update
  modules; without ``--stop-after-init`` the HTTP server then runs on 8069. Unknown options are accepted.
* Port 8072 (Odoo's gevent port) answers ``/websocket`` (a real handshake, ``101``, when asked to upgrade) and
  ``/longpolling/poll``. A lab fault: while the file ``$ODOO_STANDIN_CONTROL_DIR/8072.off`` (default
  ``/tmp/odoo-standin``) exists, port 8072 stops listening (connections refused) and 8069 keeps answering;
  removing it opens the port again (checked every 0.2 s).
* ``ir_cron`` has what monitoring reads (``cron_name``, ``nextcall``, ``lastcall``, ``failure_count``,
  ``first_failure_date``, as Odoo 17+); crons are never run, their ``nextcall`` starts a day ahead.
* ``odoo neutralize -d DB``: what Odoo 16's neutralization does to a database copy.
* ``odoo shell -d DB``: runs Python from stdin with ``cr`` (psycopg2 cursor) and ``env`` (None).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg2

from . import common

log_loading = common.get_logger("odoo.modules.loading")
log_server = common.get_logger("odoo.service.server")
log_odoo = common.get_logger("odoo")
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B65"

SCHEMA = """
CREATE TABLE ir_module_module (
    id serial PRIMARY KEY, name varchar NOT NULL UNIQUE, state varchar NOT NULL DEFAULT 'uninstalled',
    latest_version varchar, auto_install boolean NOT NULL DEFAULT false,
    create_date timestamp DEFAULT (now() AT TIME ZONE 'UTC'), write_date timestamp DEFAULT (now() AT TIME ZONE 'UTC'));
CREATE TABLE ir_config_parameter (
    id serial PRIMARY KEY, key varchar NOT NULL UNIQUE, value text NOT NULL,
    create_date timestamp, write_date timestamp);
CREATE TABLE res_lang (id serial PRIMARY KEY, code varchar NOT NULL UNIQUE, name varchar, active boolean);
CREATE TABLE res_users (id serial PRIMARY KEY, login varchar NOT NULL UNIQUE, active boolean DEFAULT true);
CREATE TABLE ir_mail_server (
    id serial PRIMARY KEY, name varchar NOT NULL, smtp_host varchar, smtp_port integer,
    active boolean NOT NULL DEFAULT true);
CREATE TABLE ir_cron (
    id serial PRIMARY KEY, name varchar NOT NULL, active boolean NOT NULL DEFAULT true,
    cron_name varchar GENERATED ALWAYS AS (name) STORED, interval_number integer NOT NULL DEFAULT 1,
    interval_type varchar NOT NULL DEFAULT 'days',
    nextcall timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC') + interval '1 day', lastcall timestamp,
    failure_count integer NOT NULL DEFAULT 0, first_failure_date timestamp);
CREATE TABLE ir_attachment (
    id serial PRIMARY KEY, name varchar, store_fname varchar, checksum varchar, file_size integer);
INSERT INTO res_lang (code, name, active) VALUES ('en_US', 'English (US)', true);
INSERT INTO res_users (login) VALUES ('__system__'), ('admin');
INSERT INTO ir_mail_server (name, smtp_host, smtp_port) VALUES ('Outgoing mail', 'smtp', 25);
INSERT INTO ir_cron (name) VALUES ('Base: Auto-vacuum internal data'), ('Mail: Email Queue Manager'),
    ('Panel demo: nightly job');
"""


def parse_modules(value: str | None) -> list[str]:
    """``-i a,b`` -> ["a", "b"]."""
    return [m.strip() for m in (value or "").split(",") if m.strip()]


def create_database(dbname: str) -> None:
    """CREATE DATABASE (like Odoo's ``_create_empty_database``)."""
    with common.connect() as conn, conn.cursor() as cr:
        cr.execute(f"CREATE DATABASE \"{dbname}\" ENCODING 'unicode' TEMPLATE template0")
    log_odoo.info("Created database %s", dbname)


def init_database(cr: Any, dbname: str) -> None:
    """Create the stand-in tables, parameters and a filestore with one attachment."""
    log_loading.info("init db")
    cr.execute(SCHEMA)
    for name in common.all_modules():
        manifest = common.get_manifest(name) or {}
        cr.execute(
            "INSERT INTO ir_module_module (name, state, auto_install) VALUES (%s, 'uninstalled', %s)",
            (name, bool(manifest.get("auto_install"))),
        )
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    for key, value in (
        ("database.uuid", str(uuid.uuid1())),
        ("database.secret", secrets.token_hex(16)),
        ("database.create_date", now),
        ("web.base.url", "http://localhost:8069"),
    ):
        common.set_param(cr, key, value)
    content = f"stand-in attachment of {dbname} created {now}\n".encode()
    checksum = hashlib.sha1(content).hexdigest()
    store_fname = f"{checksum[:2]}/{checksum}"
    target = common.DATA_DIR / "filestore" / dbname / store_fname
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    cr.execute(
        "INSERT INTO ir_attachment (name, store_fname, checksum, file_size) VALUES (%s, %s, %s, %s)",
        ("welcome.txt", store_fname, checksum, len(content)),
    )


def module_states(cr: Any) -> dict[str, str]:
    """name -> state."""
    cr.execute("SELECT name, state FROM ir_module_module")
    return dict(cr.fetchall())


def update_module_list(cr: Any) -> None:
    """Register addons that appeared in the addons path (``updating modules list``)."""
    known = module_states(cr)
    for name in common.all_modules():
        if name not in known:
            manifest = common.get_manifest(name) or {}
            cr.execute(
                "INSERT INTO ir_module_module (name, state, auto_install) VALUES (%s, 'uninstalled', %s)",
                (name, bool(manifest.get("auto_install"))),
            )


def load_module(cr: Any, name: str, index: int, total: int, *, upgrade: bool) -> None:
    """Install or upgrade one module: its manifest version becomes ``latest_version``."""
    manifest = common.get_manifest(name)
    if manifest is None:
        raise SystemExit(f"module {name}: not found in the addons path or invalid manifest")
    version = common.adapt_version(str(manifest.get("version", "1.0")))
    log_loading.info("Loading module %s (%d/%d)", name, index, total)
    if upgrade:
        common.get_logger("odoo.modules.registry").info("module %s: upgrading to %s", name, version)
    cr.execute(
        "UPDATE ir_module_module SET state = 'installed', latest_version = %s, "
        "write_date = now() AT TIME ZONE 'UTC' WHERE name = %s",
        (version, name),
    )


def with_dependencies(names: list[str], states: dict[str, str]) -> list[str]:
    """Modules to install in dependency order, plus auto_install modules whose dependencies are met."""
    ordered: list[str] = []

    def visit(name: str, trail: tuple[str, ...] = ()) -> None:
        if name in ordered or name in trail:
            return
        manifest = common.get_manifest(name)
        if manifest is None:
            raise SystemExit(f"module {name}: not found in the addons path or invalid manifest")
        for dep in manifest.get("depends", []):
            if states.get(dep) != "installed":
                visit(dep, (*trail, name))
        ordered.append(name)

    for name in names:
        visit(name)
    installed = {n for n, s in states.items() if s == "installed"} | set(ordered)
    changed = True
    while changed:
        changed = False
        for name in common.all_modules():
            manifest = common.get_manifest(name) or {}
            if name not in installed and manifest.get("auto_install") and manifest.get("installable", True):
                if set(manifest.get("depends", [])) <= installed:
                    ordered.append(name)
                    installed.add(name)
                    changed = True
    return ordered


def install_and_update(dbname: str, install: list[str], update: list[str]) -> None:
    """``-i`` / ``-u`` of Odoo on ``dbname`` (created and initialised when needed)."""
    common.set_current_db(dbname)
    started = time.monotonic()
    if not common.db_exists(dbname):
        create_database(dbname)
    conn = common.connect(dbname, autocommit=False)
    with conn, conn.cursor() as cr:
        cr.execute("SELECT pg_advisory_xact_lock(hashtext('odoo-standin-load'))")
        if not common.is_initialized(cr):
            init_database(cr, dbname)
            install = ["base", *[m for m in install if m != "base"]]
        states = module_states(cr)
        log_loading.info("loading %d modules...", sum(1 for s in states.values() if s == "installed") or 1)
        if update:
            log_loading.info("updating modules list")
            update_module_list(cr)
            states = module_states(cr)
        to_install = with_dependencies([m for m in install if states.get(m) != "installed"], states)
        if "all" in update:
            update = [n for n, s in states.items() if s == "installed"]
        to_update = [m for m in update if states.get(m) == "installed" and m not in to_install]
        total = len(to_install) + len(to_update)
        for index, name in enumerate(to_install, 1):
            load_module(cr, name, index, total, upgrade=False)
        for index, name in enumerate(to_update, len(to_install) + 1):
            load_module(cr, name, index, total, upgrade=True)
        log_loading.info("%d modules loaded in %.2fs, %d queries", total, time.monotonic() - started, 3 * total)
    conn.close()
    log_loading.info("Modules loaded.")


def check_database(dbname: str | None) -> None:
    """What the server logs about its database at start."""
    if not dbname:
        return
    common.set_current_db(dbname)
    try:
        if not common.db_exists(dbname):
            log_odoo.warning("Database %s does not exist yet", dbname)
            return
        with common.connect(dbname) as conn, conn.cursor() as cr:
            if not common.is_initialized(cr):
                log_odoo.error("Database %s not initialized, you can force it with `-i base`", dbname)
                return
            cr.execute("SELECT count(*) FROM ir_module_module WHERE state = 'installed'")
            count = cr.fetchone()[0]
        log_loading.info("loading %d modules...", count)
        log_loading.info("%d modules loaded in 0.01s, 0 queries (+0 extra)", count)
        log_loading.info("Modules loaded.")
    except psycopg2.Error as exc:
        log_odoo.error("Could not check database %s: %s", dbname, str(exc).strip())


# -- HTTP server -----------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """The few Odoo 16 endpoints the panel uses."""

    server_version = "Werkzeug/2.0.2"
    sys_version = "Python/3.11"
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle on, a kept-alive client (a proxy) waits ~40 ms for the second.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        client = self.client_address[0]
        if common.env_bool("PROXY_MODE") and self.headers.get("X-Forwarded-For"):
            client = self.headers["X-Forwarded-For"].split(",")[0].strip()
        stamp = datetime.now(UTC).strftime("%d/%b/%Y %H:%M:%S")
        common.get_logger("werkzeug").info(
            '%s - - [%s] "%s" %s - 1 0.001 0.002', client, stamp, self.requestline, args[1] if len(args) > 1 else "-"
        )

    def send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_html(self, status: int, text: str) -> None:
        body = f"<!DOCTYPE html><html><body>{text}</body></html>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/web/health":
            payload: dict[str, Any] = {"status": "pass"}
            if "db_server_status=1" in query.split("&"):
                try:
                    common.connect(timeout=3).close()
                    payload["db_server_status"] = True
                except psycopg2.Error:
                    self.send_json(500, {"status": "fail", "db_server_status": False})
                    return
            self.send_json(200, payload)
        elif path == "/websocket" and self.headers.get("Upgrade", "").lower() == "websocket":
            self.accept_websocket()
        elif path in ("/websocket", "/longpolling/poll"):
            # Odoo's gevent port (8072) answers these; the stand-in says which port took the request.
            self.send_json(200, {"port": self.server.server_address[1], "path": path})
        elif path in ("/", "/web"):
            self.send_response(303)
            self.send_header("Location", "/web/login")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/web/login":
            self.send_html(200, "<form>Odoo 16.0 (lab stand-in) login</form>")
        elif path.startswith("/web/database"):
            if not common.env_bool("LIST_DB"):
                self.send_html(403, "The database manager has been disabled by the administrator")
            else:
                self.send_html(200, "Database manager (lab stand-in)")
        else:
            self.send_html(404, "404: Not Found")

    def accept_websocket(self) -> None:
        """Answer a websocket handshake (RFC 6455) with ``101``, then hold the connection until the client leaves."""
        key = self.headers.get("Sec-WebSocket-Key", "")
        if not key or self.headers.get("Sec-WebSocket-Version") != "13":
            self.send_html(400, "Bad websocket handshake")
            return
        accept = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        self.connection.settimeout(60)
        try:
            while self.connection.recv(4096):
                pass
        except OSError:
            pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            request = {}
        rpc_id = request.get("id")
        version = {
            "server_version": common.SERVER_VERSION,
            "server_version_info": common.SERVER_VERSION_INFO,
            "server_serie": common.SERVER_SERIE,
            "protocol_version": common.PROTOCOL_VERSION,
        }
        if self.path == "/web/webclient/version_info":
            self.send_json(200, {"jsonrpc": "2.0", "id": rpc_id, "result": version})
        elif self.path == "/jsonrpc" and request.get("params", {}).get("method") == "version":
            self.send_json(200, {"jsonrpc": "2.0", "id": rpc_id, "result": version})
        elif self.path == "/web/database/list":
            if not common.env_bool("LIST_DB"):
                error = {"code": 200, "message": "Odoo Server Error", "data": {"name": "odoo.exceptions.AccessDenied"}}
                self.send_json(200, {"jsonrpc": "2.0", "id": rpc_id, "error": error})
                return
            with common.connect() as conn, conn.cursor() as cr:
                cr.execute("SELECT datname FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres'")
                names = sorted(r[0] for r in cr.fetchall())
            self.send_json(200, {"jsonrpc": "2.0", "id": rpc_id, "result": names})
        else:
            self.send_html(404, "404: Not Found")


def serve_gevent_port(port: int = 8072) -> None:
    """Serve Odoo's second port, closed while the lab's fault file ``8072.off`` exists (see the module docstring)."""
    off = Path(os.environ.get("ODOO_STANDIN_CONTROL_DIR", "/tmp/odoo-standin")) / "8072.off"
    server: ThreadingHTTPServer | None = None
    closed = warned = False
    while True:
        if off.exists() and server is not None:
            server.shutdown()
            server.server_close()
            server, closed = None, True
            log_server.warning("Port %d closed (lab fault: %s exists)", port, off)
        elif not off.exists() and server is None:
            try:
                server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
            except OSError as exc:
                if not warned:
                    log_server.warning("Port %d unavailable: %s", port, exc)
                    warned = True
            else:
                server.daemon_threads = True
                threading.Thread(target=server.serve_forever, daemon=True).start()
                if closed:
                    log_server.info("Port %d open again", port)
        time.sleep(0.2)


def serve(port: int) -> None:
    """Run the HTTP server until SIGTERM/SIGINT."""
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True

    def shutdown(signum: int, _frame: Any) -> None:
        common.set_current_db(None)
        log_server.info("Initiating shutdown")
        log_server.info("Hit CTRL-C again or send a second signal to force the shutdown.")
        threading.Thread(target=server.shutdown, daemon=True).start()

    # Odoo's second port (gevent: /websocket, /longpolling) is served by the same handler.
    threading.Thread(target=serve_gevent_port, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    common.set_current_db(None)
    log_server.info("HTTP service (werkzeug) running on %s:%d", os.uname().nodename, port)
    server.serve_forever()
    server.server_close()


# -- sub-commands ----------------------------------------------------------------------------------


def neutralize(argv: list[str]) -> int:
    """``odoo neutralize -d DB``: mail off (dummy server in place), crons off but autovacuum, flag set."""
    parser = argparse.ArgumentParser(prog="odoo neutralize")
    parser.add_argument("-d", "--database", default=os.environ.get("PGDATABASE"))
    parser.add_argument("--stdout", action="store_true", help="print the SQL instead of running it")
    args, _ = parser.parse_known_args(argv)
    logger = common.get_logger("odoo.cli.neutralize")
    if not args.database:
        logger.error('Neutralize command needs a database name. Use "-d" argument')
        return 1
    common.set_current_db(args.database)
    queries = [
        "UPDATE ir_mail_server SET active = false",
        "INSERT INTO ir_mail_server (name, smtp_host, smtp_port, active) "
        "VALUES ('neutralization - disable emails', 'invalid', 25, true)",
        "UPDATE ir_cron SET active = false WHERE name <> 'Base: Auto-vacuum internal data'",
        "INSERT INTO ir_config_parameter (key, value, create_date, write_date) "
        "VALUES ('database.is_neutralized', 'true', now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC') "
        "ON CONFLICT (key) DO UPDATE SET value = 'true'",
    ]
    if args.stdout:
        print("BEGIN;\n" + ";\n".join(queries) + ";\nCOMMIT;")
        return 0
    logger.info("Starting Database neutralization")
    try:
        conn = common.connect(args.database, autocommit=False)
    except psycopg2.OperationalError as exc:
        logger.error("Could not connect to database %s: %s", args.database, str(exc).strip())
        return 1
    with conn, conn.cursor() as cr:
        if not common.is_initialized(cr):
            logger.error("Database %s not initialized", args.database)
            return 1
        for query in queries:
            cr.execute(query)
    conn.close()
    logger.info("Neutralization finished")
    return 0


def shell(argv: list[str]) -> int:
    """``odoo shell``: exec Python from stdin with a psycopg2 cursor ``cr`` (autocommitted at the end); on a
    terminal (stdin is a tty), an interactive console with ``cr`` (autocommit) and ``env`` (None), like Odoo's."""
    parser = argparse.ArgumentParser(prog="odoo shell")
    parser.add_argument("-d", "--database", default=os.environ.get("PGDATABASE"))
    args, _ = parser.parse_known_args(argv)
    if sys.stdin.isatty():
        import code as console

        conn = common.connect(args.database, autocommit=True)
        with conn.cursor() as cr:
            console.interact(
                banner=f"odoo shell (stand-in) on {args.database}: cr is a cursor, env is None",
                local={"cr": cr, "env": None, "__name__": "__main__"},
                exitmsg="",
            )
        conn.close()
        return 0
    code = sys.stdin.read()
    conn = common.connect(args.database, autocommit=False)
    with conn, conn.cursor() as cr:
        exec(compile(code, "<stdin>", "exec"), {"cr": cr, "env": None, "__name__": "__main__"})
    conn.close()
    return 0


def main(argv: list[str]) -> int:
    """Entry point of ``odoo``."""
    common.setup_logging()
    if argv and argv[0] == "neutralize":
        return neutralize(argv[1:])
    if argv and argv[0] == "shell":
        return shell(argv[1:])
    if argv and argv[0] == "server":
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="odoo")
    parser.add_argument("-d", "--database")
    parser.add_argument("-i", "--init")
    parser.add_argument("-u", "--update")
    parser.add_argument("--stop-after-init", action="store_true")
    parser.add_argument("-p", "--http-port", type=int, default=8069)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--max-cron-threads", type=int, default=2)
    parser.add_argument("--version", action="store_true")
    args, unknown = parser.parse_known_args(argv)
    if args.version:
        print(f"Odoo Server {common.SERVER_VERSION}")
        return 0
    dbname = args.database or os.environ.get("PGDATABASE")
    log_odoo.info("Odoo version %s (lab stand-in)", common.SERVER_VERSION)
    log_odoo.info("Using configuration file at %s", common.CONFIG_FILE)
    log_odoo.info("addons paths: %s", [str(p) for p in common.addons_paths()])
    log_odoo.info(
        "database: %s@%s:%s",
        os.environ.get("PGUSER", "odoo"),
        os.environ.get("PGHOST", "db"),
        os.environ.get("PGPORT", "5432"),
    )
    if unknown:
        log_odoo.debug("ignored options: %s", unknown)
    install, update = parse_modules(args.init), parse_modules(args.update)
    try:
        if install or update:
            if not dbname:
                log_odoo.error("-i/-u need a database (-d or PGDATABASE)")
                return 1
            install_and_update(dbname, install, update)
        elif not args.stop_after_init:
            check_database(dbname)
    except psycopg2.Error as exc:
        common.get_logger("odoo.service.server").error("Failed to load registry: %s", str(exc).strip())
        return 1
    if args.stop_after_init:
        return 0
    if args.workers:
        log_server.info("Multiprocessing mode with %d workers (served by one process in the stand-in)", args.workers)
    serve(args.http_port)
    return 0
