"""The named checks of an environment (``CheckState.name``), what each one's failure means, and a check's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from monitoring.models import CheckStatus

AVAILABILITY = "availability"  # Odoo's /web/health on 8069 answers and its containers run: failing = down
WEBSOCKET = "websocket"  # the 8072 websocket (Odoo 16+) or /longpolling handshake
CRON_OVERDUE = "cron_overdue"
CRON_FAILURES = "cron_failures"
QUEUE_JOB = "queue_job"
DATABASE_SIZE = "database_size"
FILESTORE_SIZE = "filestore_size"
LONG_QUERIES = "long_queries"
IDLE_IN_TRANSACTION = "idle_in_transaction"
LOCKS = "locks"
CONNECTIONS = "connections"
WORKERS = "workers"
BACKUP_AGE = "backup_age"
SERVER_DISK = "server_disk"

ALL = (
    AVAILABILITY, WEBSOCKET, CRON_OVERDUE, CRON_FAILURES, QUEUE_JOB, DATABASE_SIZE, FILESTORE_SIZE, LONG_QUERIES,
    IDLE_IN_TRANSACTION, LOCKS, CONNECTIONS, WORKERS, BACKUP_AGE, SERVER_DISK,
)  # fmt: skip

#: Measured by every poll cycle.
EVERY_CYCLE = (AVAILABILITY, WEBSOCKET, SERVER_DISK)
#: Measured every MONITOR_ODOO_CHECK_EVERY cycles (psql inside the db container, and the backups' records).
ODOO = (
    CRON_OVERDUE, CRON_FAILURES, QUEUE_JOB, DATABASE_SIZE, FILESTORE_SIZE, LONG_QUERIES, IDLE_IN_TRANSACTION, LOCKS,
    CONNECTIONS, WORKERS, BACKUP_AGE,
)  # fmt: skip


@dataclass
class CheckResult:
    """One result of one check of one environment, as ``monitoring.incidents.observe`` takes it."""

    name: str
    status: CheckStatus
    message: str
    value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def unknown(name: str, message: str) -> CheckResult:
    """A check that could not be measured this cycle (it counts neither as a failure nor as a success)."""
    return CheckResult(name, CheckStatus.UNKNOWN, message)
