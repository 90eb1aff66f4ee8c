"""``click-odoo-update`` stand-in, following acsone/click-odoo-contrib's update.py.

* database missing: ``Error: Database does not exist`` and exit 1 (``--if-exists``: message, exit 0);
* database never initialised: fails on the missing ``ir_config_parameter`` table, like the real tool;
* no stored hashes yet (a database it has never seen): every installed addon counts as changed;
* ``--only-compute-hashes``: store the hashes, update nothing; ``--list-only``: log, update nothing;
* otherwise update installed addons whose directory hash changed (``latest_version`` <- manifest
  version), then store the new hashes.
"""

from __future__ import annotations

import argparse
import os
import sys

import psycopg2

from . import common
from .cli import load_module

CORE_ADDONS = {"base", "web"}


def main(argv: list[str]) -> int:
    """Entry point."""
    common.setup_logging()
    parser = argparse.ArgumentParser(prog="click-odoo-update")
    parser.add_argument("-c", "--config")
    parser.add_argument("-d", "--database", default=os.environ.get("PGDATABASE"))
    parser.add_argument("--log-level")
    parser.add_argument("--i18n-overwrite", action="store_true")
    parser.add_argument("--update-all", action="store_true")
    parser.add_argument("--ignore-addons")
    parser.add_argument("--ignore-core-addons", action="store_true")
    parser.add_argument("--if-exists", action="store_true")
    parser.add_argument("--watcher-max-seconds", type=float, default=0)
    parser.add_argument("--list-only", action="store_true")
    parser.add_argument("--only-compute-hashes", action="store_true")
    parser.add_argument("--pre-update-scripts")
    args = parser.parse_args(argv)
    logger = common.get_logger("click_odoo_contrib.update")
    ignore = set(filter(None, (args.ignore_addons or "").split(",")))
    if args.ignore_core_addons:
        ignore |= CORE_ADDONS
    if ignore and args.update_all:
        print("Error: --update-all and --ignore(-core)-addons cannot be used together", file=sys.stderr)
        return 1
    if not args.database or not common.db_exists(args.database):
        if args.if_exists:
            print("Database does not exist")
            return 0
        print("Error: Database does not exist", file=sys.stderr)
        return 1
    common.set_current_db(args.database)
    conn = common.connect(args.database, autocommit=False)
    try:
        with conn, conn.cursor() as cr:
            cr.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"click-odoo-update/{args.database}",))
            if args.only_compute_hashes:
                common.save_installed_checksums(cr, ignore)
                logger.info("Only computed and stored module hashes, update is not performed.")
                return 0
            if args.update_all:
                cr.execute("SELECT name FROM ir_module_module WHERE state = 'installed' ORDER BY name")
                to_update = [row[0] for row in cr.fetchall()]
            else:
                checksums = common.load_installed_checksums(cr)
                cr.execute("SELECT name FROM ir_module_module WHERE state IN ('installed', 'to upgrade') ORDER BY name")
                to_update = []
                for (name,) in cr.fetchall():
                    manifest = common.get_manifest(name)
                    if not manifest or not manifest.get("installable", True) or name in ignore:
                        continue
                    if common.checksum_dir(cr, name) != checksums.get(name):
                        to_update.append(name)
                if to_update:
                    logger.info("Updating addons for their hash changed: %s.", ",".join(to_update))
            if args.list_only:
                logger.info("List-only selected, update is not performed.")
                return 0
            if not to_update:
                logger.info("No module needs updating, update is not performed.")
                return 0
            common.get_logger("odoo.modules.loading").info("updating modules list")
            for index, name in enumerate(to_update, 1):
                load_module(cr, name, index, len(to_update), upgrade=True)
            common.get_logger("odoo.modules.loading").info("Modules loaded.")
            common.save_installed_checksums(cr, ignore)
    except psycopg2.Error as exc:
        # e.g. a database that was never initialised: relation "ir_config_parameter" does not exist
        print("Traceback (most recent call last):", file=sys.stderr)
        print(f"psycopg2.errors.{type(exc).__name__}: {str(exc).strip()}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    return 0
