"""The named checks of an environment (``CheckState.name``), and what each one's failure means."""

from __future__ import annotations

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
