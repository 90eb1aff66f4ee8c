"""Django settings, read only from environment variables (see panel/env.py and the README)."""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from panel.env import envbool, envchoice, envfloat, envint, envlist, envstr

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(envstr("PANEL_DATA_DIR", str(BASE_DIR / "var")))

SECRET_KEY = envstr("PANEL_SECRET_KEY")
DEBUG = envbool("PANEL_DEBUG", False)
ALLOWED_HOSTS = envlist("PANEL_ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = envlist("PANEL_CSRF_TRUSTED_ORIGINS", "")

# HTTPS hardening; a local run on http://127.0.0.1 sets PANEL_HTTPS=false.
PANEL_HTTPS = envbool("PANEL_HTTPS", True)
SECURE_SSL_REDIRECT = PANEL_HTTPS
SESSION_COOKIE_SECURE = PANEL_HTTPS
CSRF_COOKIE_SECURE = PANEL_HTTPS
SECURE_HSTS_SECONDS = envint("PANEL_HSTS_SECONDS", 31536000 if PANEL_HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = PANEL_HTTPS
SECURE_HSTS_PRELOAD = envbool("PANEL_HSTS_PRELOAD", PANEL_HTTPS)
if envbool("PANEL_BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Reverse proxies (IPs and CIDRs; "none" for no one) whose X-Forwarded-For names the client: the audit log and the
# login lockout see the client, not the proxy. uvicorn's --forwarded-allow-ips must not trust more than this
# (docker-compose.yml and the launcher give it the same list); see panel.accounts.services.client_ip.
PANEL_TRUSTED_PROXIES = envlist("PANEL_TRUSTED_PROXIES", "127.0.0.1,::1")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = envint("PANEL_SESSION_SECONDS", 12 * 3600, minimum=60)
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_celery_beat",
    "panel.accounts",
    "panel.inventory",
    "panel.jobs",
    "deployments",
    "backups",
    "monitoring",
    "terminal",
    "mailcatcher",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "panel.middleware.ContentSecurityPolicyMiddleware",
    # Before anything reads the database: a NUL in the path, query string or form data answers 400.
    "panel.middleware.RefuseUnstorableInputMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # After auth and messages: a signed-in session that still owes its second factor reaches only enrolment.
    "panel.accounts.middleware.TwoFactorMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "panel.jobs.middleware.QueueUnavailableMiddleware",
]

ROOT_URLCONF = "panel.urls"
ASGI_APPLICATION = "panel.asgi.application"
WSGI_APPLICATION = "panel.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "panel.accounts.context.organizations",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL", f"sqlite:///{DATA_DIR / 'panel.sqlite3'}"),
        conn_max_age=envint("DATABASE_CONN_MAX_AGE", 0, minimum=0),
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several processes (web, worker with its job threads, beat) share the file. WAL lets readers run beside the
    # one writer; a write transaction takes the write lock when it begins (IMMEDIATE), where SQLite waits up to
    # the busy timeout, instead of upgrading a read lock half-way, which fails at once with "database is
    # locked"; synchronous=NORMAL is WAL's durable-enough setting (no fsync per commit).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": envfloat("DATABASE_SQLITE_BUSY_TIMEOUT", 30.0),
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("PANEL_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(envstr("PANEL_STATIC_ROOT", str(DATA_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG

# Redis: Celery's broker and the Channels layer.
REDIS_URL = envstr("REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "capacity": 1000, "expiry": 60},
    }
}

# Celery (namespace CELERY_ in panel/celery.py).
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "jobs"
CELERY_TASK_ROUTES = {
    "panel.jobs.tasks.run_job": {"queue": "jobs"},
    "panel.jobs.tasks.reap_stale_jobs": {"queue": "monitoring"},
    "backups.tasks.*": {"queue": "monitoring"},
    "monitoring.*": {"queue": "monitoring"},
}
# Ride out broker restarts: a worker retries the connection forever (at start and after a loss) instead of
# exiting, and a running job keeps running through the outage: cancelling it on connection loss (acks_late's
# usual remedy) would kill a deploy half-way, and its redelivery would do nothing (the job is already claimed).
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": envint("CELERY_VISIBILITY_TIMEOUT", 6 * 3600, minimum=60),
    # Notice a dead or half-open connection (TCP keepalive, a PING on idle connections), bound a command on
    # one (a publish must not hang the request that makes it), and retry a command that timed out once.
    "socket_keepalive": True,
    "socket_connect_timeout": envfloat("CELERY_BROKER_CONNECT_TIMEOUT", 5.0),
    "socket_timeout": envfloat("CELERY_BROKER_SOCKET_TIMEOUT", 10.0),
    "health_check_interval": envint("CELERY_BROKER_HEALTH_CHECK_INTERVAL", 10, minimum=1),
    "retry_on_timeout": True,
}
CELERY_BEAT_SCHEDULER = envstr("CELERY_BEAT_SCHEDULER", "django_celery_beat.schedulers:DatabaseScheduler")
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_IMPORTS = envlist("CELERY_IMPORTS", "")

# Secrets at rest: a comma-separated list of Fernet keys; the first encrypts, all decrypt (rotation).
PANEL_ENCRYPTION_KEYS = envlist("PANEL_ENCRYPTION_KEYS")

# Remote access (seconds).
SSH_CONNECT_TIMEOUT = envfloat("SSH_CONNECT_TIMEOUT", 10.0)
SSH_BANNER_TIMEOUT = envfloat("SSH_BANNER_TIMEOUT", 10.0)
SSH_AUTH_TIMEOUT = envfloat("SSH_AUTH_TIMEOUT", 15.0)
SSH_COMMAND_TIMEOUT = envfloat("SSH_COMMAND_TIMEOUT", 900.0)
SSH_IDLE_OUTPUT_TIMEOUT = envfloat("SSH_IDLE_OUTPUT_TIMEOUT", 300.0)
SSH_KEEPALIVE_INTERVAL = envint("SSH_KEEPALIVE_INTERVAL", 15, minimum=0)
SSH_MAX_CHANNELS = envint("SSH_MAX_CHANNELS", 8, minimum=1)

# Refuse git remotes on loopback/private/link-local addresses or on the server's disk (SSRF policy).
PANEL_BLOCK_PRIVATE_GIT_HOSTS = envbool("PANEL_BLOCK_PRIVATE_GIT_HOSTS", False)

# Backup storage (backups.storage). Local storages live under one of these directories on the panel host; S3
# endpoints that resolve to loopback/private/link-local addresses are refused with the SSRF policy on.
BACKUP_LOCAL_ROOTS = envlist("BACKUP_LOCAL_ROOTS", str(DATA_DIR / "backups"))
PANEL_BLOCK_PRIVATE_S3_ENDPOINTS = envbool("PANEL_BLOCK_PRIVATE_S3_ENDPOINTS", False)
# Smallest multipart part size of S3 uploads (MiB); larger for large expected sizes, and doubled every 1,000 parts,
# so that every upload stays within S3's 10,000 parts.
BACKUP_S3_PART_SIZE_MB = envint("BACKUP_S3_PART_SIZE_MB", 16, minimum=5)
BACKUP_S3_CONNECT_TIMEOUT = envfloat("BACKUP_S3_CONNECT_TIMEOUT", 10.0)
BACKUP_S3_READ_TIMEOUT = envfloat("BACKUP_S3_READ_TIMEOUT", 120.0)
BACKUP_S3_MAX_ATTEMPTS = envint("BACKUP_S3_MAX_ATTEMPTS", 5, minimum=1)

# Backup schedules (backups.schedule): cron expressions in the environment's time zone; '' means no schedule.
BACKUP_SCHEDULE_PRODUCTION = envstr("BACKUP_SCHEDULE_PRODUCTION", "0 3 * * *")
BACKUP_SCHEDULE_OTHER = envstr("BACKUP_SCHEDULE_OTHER", "")
BACKUP_SCHEDULE_MIN_INTERVAL_MINUTES = envint("BACKUP_SCHEDULE_MIN_INTERVAL_MINUTES", 60, minimum=1)
# An environment is flagged when a scheduled run passed this long ago without a newer verified backup.
BACKUP_OVERDUE_GRACE_MINUTES = envint("BACKUP_OVERDUE_GRACE_MINUTES", 240, minimum=0)
# Retention (backups.retention): grandfather-father-son slots, the pre-deploy dumps' own short retention, and how
# long an unverified backup is kept while its verification may still run.
BACKUP_KEEP_DAILY = envint("BACKUP_KEEP_DAILY", 7, minimum=0)
BACKUP_KEEP_WEEKLY = envint("BACKUP_KEEP_WEEKLY", 4, minimum=0)
BACKUP_KEEP_MONTHLY = envint("BACKUP_KEEP_MONTHLY", 3, minimum=0)
BACKUP_KEEP_PRE_DEPLOY = envint("BACKUP_KEEP_PRE_DEPLOY", 3, minimum=0)
BACKUP_KEEP_PRE_DEPLOY_DAYS = envint("BACKUP_KEEP_PRE_DEPLOY_DAYS", 14, minimum=0)
BACKUP_KEEP_PRE_RESTORE = envint("BACKUP_KEEP_PRE_RESTORE", 3, minimum=0)
BACKUP_KEEP_PRE_RESTORE_DAYS = envint("BACKUP_KEEP_PRE_RESTORE_DAYS", 14, minimum=0)
BACKUP_KEEP_UNVERIFIED_HOURS = envint("BACKUP_KEEP_UNVERIFIED_HOURS", 24, minimum=0)
# Odoo dump zips (backups.odoozip): limits on an uploaded zip, checked before anything is extracted.
BACKUP_ZIP_MAX_MEMBERS = envint("BACKUP_ZIP_MAX_MEMBERS", 500_000, minimum=1)
BACKUP_ZIP_MAX_MEMBER_GIB = envint("BACKUP_ZIP_MAX_MEMBER_GIB", 256, minimum=1)
BACKUP_ZIP_MAX_TOTAL_GIB = envint("BACKUP_ZIP_MAX_TOTAL_GIB", 512, minimum=1)
BACKUP_ZIP_MAX_RATIO = envint("BACKUP_ZIP_MAX_RATIO", 200, minimum=1)
# An imported zip is stored as parts of this size (MiB), each its own (encrypted) object: a reader seeks to the
# zip's central directory and members by opening one part, never the whole upload.
BACKUP_ZIP_PART_MB = envint("BACKUP_ZIP_PART_MB", 64, minimum=1)
# The backup job (backups.services): pg_dump's compression where the server's pg_dump supports it (zstd and lz4
# need PostgreSQL 16+; older ones use gzip), and how long one streamed step (dump, filestore) may take in all and
# without moving a byte.
BACKUP_DUMP_COMPRESSION = envchoice("BACKUP_DUMP_COMPRESSION", "zstd", ("zstd", "lz4", "gzip"))
BACKUP_STEP_TIMEOUT = envfloat("BACKUP_STEP_TIMEOUT", 6 * 3600.0)
BACKUP_IDLE_TIMEOUT = envfloat("BACKUP_IDLE_TIMEOUT", 600.0)
# Verify, the schedule fan-out and pruning (backups.verify, backups.scheduling): the panel host's pg_restore that
# reads a dump being verified ('' = don't), how many backups run at once per server, how often the fan-out (due
# backups, the overdue flag) and pruning run (seconds).
BACKUP_VERIFY_PG_RESTORE = envstr("BACKUP_VERIFY_PG_RESTORE", "pg_restore")
BACKUP_MAX_PER_SERVER = envint("BACKUP_MAX_PER_SERVER", 2, minimum=1)
BACKUP_SCHEDULE_INTERVAL = envint("BACKUP_SCHEDULE_INTERVAL", 60, minimum=1)
BACKUP_PRUNE_INTERVAL = envint("BACKUP_PRUNE_INTERVAL", 3600, minimum=60)

# Monitoring.
# History: raw samples, hourly and daily rollups are kept this long; the rollup task runs every
# MONITOR_ROLLUP_INTERVAL seconds. Public status pages are cached MONITOR_STATUS_CACHE_SECONDS; /metrics wants
# "Authorization: Bearer <MONITOR_METRICS_TOKEN>" (unset: /metrics answers 404).
MONITOR_RAW_RETENTION_HOURS = envint("MONITOR_RAW_RETENTION_HOURS", 24, minimum=2)
MONITOR_HOURLY_RETENTION_DAYS = envint("MONITOR_HOURLY_RETENTION_DAYS", 30, minimum=2)
MONITOR_DAILY_RETENTION_DAYS = envint("MONITOR_DAILY_RETENTION_DAYS", 400, minimum=2)
MONITOR_ROLLUP_INTERVAL = envint("MONITOR_ROLLUP_INTERVAL", 300, minimum=10)
MONITOR_STATUS_CACHE_SECONDS = envint("MONITOR_STATUS_CACHE_SECONDS", 30, minimum=0)
MONITOR_METRICS_TOKEN = envstr("MONITOR_METRICS_TOKEN", "")
# Polling (monitoring.poller): every MONITOR_INTERVAL seconds (0: no polling) one cycle per server, bounded by
# MONITOR_SERVER_TIMEOUT; each HTTP/websocket probe by MONITOR_PROBE_TIMEOUT, docker stats and each psql by
# MONITOR_SQL_TIMEOUT. The Odoo checks (monitoring.odoo_checks) run every MONITOR_ODOO_CHECK_EVERY cycles.
MONITOR_INTERVAL = envint("MONITOR_INTERVAL", 30, minimum=0)
MONITOR_SERVER_TIMEOUT = envfloat("MONITOR_SERVER_TIMEOUT", 25.0)
# A poll older than this (0: 3 x MONITOR_INTERVAL + MONITOR_SERVER_TIMEOUT) says nothing: its environment is unknown.
MONITOR_STALE_SECONDS = envint("MONITOR_STALE_SECONDS", 0, minimum=0)
MONITOR_PROBE_TIMEOUT = envfloat("MONITOR_PROBE_TIMEOUT", 5.0)
MONITOR_SQL_TIMEOUT = envfloat("MONITOR_SQL_TIMEOUT", 15.0)
MONITOR_ODOO_CHECK_EVERY = envint("MONITOR_ODOO_CHECK_EVERY", 4, minimum=1)
# Thresholds of the checks (README "Monitoring"): a check past its threshold fails (the environment is degraded),
# sizes and growth only warn (0: no limit).
MONITOR_DISK_PERCENT = envint("MONITOR_DISK_PERCENT", 90, minimum=1)
MONITOR_CRON_OVERDUE_MINUTES = envint("MONITOR_CRON_OVERDUE_MINUTES", 30, minimum=1)
MONITOR_CRON_FAILURE_COUNT = envint("MONITOR_CRON_FAILURE_COUNT", 2, minimum=1)
MONITOR_QUEUE_JOB_AGE_MINUTES = envint("MONITOR_QUEUE_JOB_AGE_MINUTES", 60, minimum=1)
MONITOR_DATABASE_SIZE_WARN_MB = envint("MONITOR_DATABASE_SIZE_WARN_MB", 0, minimum=0)
MONITOR_DATABASE_GROWTH_WARN_MB_PER_DAY = envint("MONITOR_DATABASE_GROWTH_WARN_MB_PER_DAY", 2048, minimum=0)
MONITOR_FILESTORE_SIZE_WARN_MB = envint("MONITOR_FILESTORE_SIZE_WARN_MB", 0, minimum=0)
MONITOR_FILESTORE_GROWTH_WARN_MB_PER_DAY = envint("MONITOR_FILESTORE_GROWTH_WARN_MB_PER_DAY", 10240, minimum=0)
MONITOR_LONG_QUERY_SECONDS = envint("MONITOR_LONG_QUERY_SECONDS", 300, minimum=1)
MONITOR_IDLE_IN_TRANSACTION_SECONDS = envint("MONITOR_IDLE_IN_TRANSACTION_SECONDS", 300, minimum=1)
MONITOR_LOCK_WAIT_SECONDS = envint("MONITOR_LOCK_WAIT_SECONDS", 60, minimum=1)
MONITOR_CONNECTIONS_PERCENT = envint("MONITOR_CONNECTIONS_PERCENT", 90, minimum=1)
MONITOR_WORKERS_BUSY_PERCENT = envint("MONITOR_WORKERS_BUSY_PERCENT", 100, minimum=1)
# Each process reports its SSH pool size to Redis with this TTL (a process gone for that long stops counting).
MONITOR_METRICS_PROCESS_TTL = envint("MONITOR_METRICS_PROCESS_TTL", 120, minimum=10)
# Live container logs (monitoring.logs): a new viewer gets the last MONITOR_LOG_TAIL_LINES lines, the browser keeps
# MONITOR_LOG_BROWSER_LINES; one follower per (environment, service) appends to a Redis Stream of at most
# MONITOR_LOG_STREAM_LINES lines, kept MONITOR_LOG_RESUME_SECONDS after its last line (a reconnect within that
# loses nothing). Viewers renew their entry every MONITOR_LOG_HEARTBEAT_SECONDS (stale after
# MONITOR_LOG_VIEWER_TIMEOUT_SECONDS); the follower ends MONITOR_LOG_LINGER_SECONDS after the last viewer left, or
# when its lease (MONITOR_LOG_LEASE_SECONDS) lapses. A socket frame carries at most MONITOR_LOG_FRAME_LINES lines;
# MONITOR_LOG_BATCH_SECONDS > 0 spaces frames by that much (0: send what arrived as soon as the previous frame left).
MONITOR_LOG_TAIL_LINES = envint("MONITOR_LOG_TAIL_LINES", 200, minimum=0)
MONITOR_LOG_BROWSER_LINES = envint("MONITOR_LOG_BROWSER_LINES", 5000, minimum=100)
MONITOR_LOG_STREAM_LINES = envint("MONITOR_LOG_STREAM_LINES", 20000, minimum=100)
MONITOR_LOG_RESUME_SECONDS = envint("MONITOR_LOG_RESUME_SECONDS", 600, minimum=10)
MONITOR_LOG_HEARTBEAT_SECONDS = envfloat("MONITOR_LOG_HEARTBEAT_SECONDS", 1.0)
MONITOR_LOG_VIEWER_TIMEOUT_SECONDS = envfloat("MONITOR_LOG_VIEWER_TIMEOUT_SECONDS", 5.0)
MONITOR_LOG_LINGER_SECONDS = envfloat("MONITOR_LOG_LINGER_SECONDS", 2.0)
MONITOR_LOG_LEASE_SECONDS = envfloat("MONITOR_LOG_LEASE_SECONDS", 10.0)
MONITOR_LOG_FRAME_LINES = envint("MONITOR_LOG_FRAME_LINES", 1000, minimum=1)
MONITOR_LOG_BATCH_SECONDS = envfloat("MONITOR_LOG_BATCH_SECONDS", 0.0)
MONITOR_LOG_RETRY_SECONDS = envfloat("MONITOR_LOG_RETRY_SECONDS", 2.0)
MONITOR_LOG_COMMAND_TIMEOUT = envfloat("MONITOR_LOG_COMMAND_TIMEOUT", 30.0)

# Deployments.
DEPLOY_ROOT = envstr("DEPLOY_ROOT", "doodba-panel")
DEPLOY_BUILD_TIMEOUT = envfloat("DEPLOY_BUILD_TIMEOUT", 3600.0)
DEPLOY_BUILD_PULL = envbool("DEPLOY_BUILD_PULL", False)
DEPLOY_UPDATE_TIMEOUT = envfloat("DEPLOY_UPDATE_TIMEOUT", 3600.0)
DEPLOY_HEALTH_TIMEOUT = envfloat("DEPLOY_HEALTH_TIMEOUT", 300.0)
DEPLOY_HEALTH_INTERVAL = envfloat("DEPLOY_HEALTH_INTERVAL", 2.0)
DEPLOY_DB_WAIT_TIMEOUT = envfloat("DEPLOY_DB_WAIT_TIMEOUT", 120.0)
# Dump the database on the server before updating addons (production, always or never); an automatic rollback
# after the update restores it. The newest DEPLOY_DB_SNAPSHOT_KEEP dumps per environment stay on the server.
DEPLOY_DB_SNAPSHOT = envchoice("DEPLOY_DB_SNAPSHOT", "production", ("production", "always", "never"))
DEPLOY_DB_SNAPSHOT_KEEP = envint("DEPLOY_DB_SNAPSHOT_KEEP", 3, minimum=1)
# After a successful deploy, the images of the newest DEPLOY_KEEP_IMAGES successful deployments of the environment
# stay (rollback targets); older panel tags, dangling images and build cache unused for DEPLOY_BUILD_CACHE_KEEP_HOURS
# go. A deploy refuses to build or dump with less than DEPLOY_MIN_FREE_DISK_MB free (0: no check).
DEPLOY_KEEP_IMAGES = envint("DEPLOY_KEEP_IMAGES", 5, minimum=1)
DEPLOY_BUILD_CACHE_KEEP_HOURS = envint("DEPLOY_BUILD_CACHE_KEEP_HOURS", 24, minimum=0)
DEPLOY_MIN_FREE_DISK_MB = envint("DEPLOY_MIN_FREE_DISK_MB", 2048, minimum=0)
# Longest apt-get update + install of Docker, the compose plugin and git by a Prepare server job asked to install.
SERVER_PREPARE_INSTALL_TIMEOUT = envfloat("SERVER_PREPARE_INSTALL_TIMEOUT", 1800.0)

# Jobs.
JOB_HEARTBEAT_INTERVAL = envfloat("JOB_HEARTBEAT_INTERVAL", 5.0)
JOB_STALE_AFTER = envfloat("JOB_STALE_AFTER", 60.0)
JOB_REAPER_INTERVAL = envfloat("JOB_REAPER_INTERVAL", 30.0)
# A job that cannot write to the database for this long (or whose heartbeat is refused) stops its remote work
# at once; shorter than JOB_STALE_AFTER, so a job has stopped before the reaper frees its target.
JOB_LEASE_SECONDS = envfloat("JOB_LEASE_SECONDS", JOB_STALE_AFTER / 2)
JOB_PROGRESS_SECONDS = envfloat("JOB_PROGRESS_SECONDS", 0.5)
if not 0 < JOB_LEASE_SECONDS < JOB_STALE_AFTER:
    raise ImproperlyConfigured("JOB_LEASE_SECONDS must be positive and shorter than JOB_STALE_AFTER.")
# How long a worker keeps retrying the final write of a job's lines and outcome while the database is away.
JOB_FINISH_RETRY_SECONDS = envfloat("JOB_FINISH_RETRY_SECONDS", 300.0)
# Queued jobs that no worker took within this time are published once more, then ended as failed.
JOB_QUEUE_TIMEOUT = envfloat("JOB_QUEUE_TIMEOUT", 600.0)
# How long a job waits for another job's lock on the server (the second line of defence) before it fails.
JOB_SERVER_LOCK_WAIT = envfloat("JOB_SERVER_LOCK_WAIT", 60.0)
JOB_LOG_BATCH_LINES = envint("JOB_LOG_BATCH_LINES", 100, minimum=1)
JOB_LOG_FLUSH_INTERVAL = envfloat("JOB_LOG_FLUSH_INTERVAL", 0.2)
JOB_LOG_PAGE_SIZE = envint("JOB_LOG_PAGE_SIZE", 1000, minimum=1)
JOB_LOG_MAX_LINE = envint("JOB_LOG_MAX_LINE", 8192, minimum=80)
# Live log sockets: a running job's socket that heard nothing for this long catches up from the database, re-reads
# the status and joins its group again (live pushes are best effort: a Redis flush drops groups and messages).
JOB_WS_QUIET_SECONDS = envfloat("JOB_WS_QUIET_SECONDS", 3.0)
# How often an open socket re-checks its session and the user's access (and before sending after that long).
JOB_WS_ACCESS_CHECK_SECONDS = envfloat("JOB_WS_ACCESS_CHECK_SECONDS", 5.0)

# Accounts.
LOGIN_LOCKOUT_ATTEMPTS = envint("LOGIN_LOCKOUT_ATTEMPTS", 5, minimum=1)
LOGIN_LOCKOUT_SECONDS = envint("LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
API_TOKEN_DEFAULT_DAYS = envint("API_TOKEN_DEFAULT_DAYS", 90, minimum=1)
API_TOKEN_MAX_DAYS = envint("API_TOKEN_MAX_DAYS", 365, minimum=1)
INVITATION_DAYS = envint("INVITATION_DAYS", 7, minimum=1)
# Two-factor login: the name authenticator apps show, and how long the code step waits after the password.
TWO_FACTOR_ISSUER = envstr("TWO_FACTOR_ISSUER", "Doodba Panel")
TWO_FACTOR_LOGIN_SECONDS = envint("TWO_FACTOR_LOGIN_SECONDS", 300, minimum=30)

# Domains and TLS: the ACME account of each server's proxy (a server's own fields override these), and the
# Traefik image the proxy runs.
ACME_DIRECTORY_URL = envstr("ACME_DIRECTORY_URL", "https://acme-v02.api.letsencrypt.org/directory")
ACME_EMAIL = envstr("ACME_EMAIL", "")
PROXY_TRAEFIK_IMAGE = envstr("PROXY_TRAEFIK_IMAGE", "traefik:v3.3")
# How long an Install proxy job waits, in all, for Traefik to replace its placeholder certificates with issued ones.
PROXY_CERTIFICATE_WAIT = envfloat("PROXY_CERTIFICATE_WAIT", 60.0)
# A deploy of an environment whose domain has no certificate yet waits this long (in all) for Docker's health check
# to let Traefik route it and for the proxy to get the certificate.
DEPLOY_CERTIFICATE_WAIT = envfloat("DEPLOY_CERTIFICATE_WAIT", 120.0)

# Monitoring: incidents and alerts (monitoring.incidents, monitoring.notify). N failures in a row open an incident,
# M successes close it; reminders while one stays open (0: none), never more often than the minimum; e-mails and
# webhooks are delivered by the monitoring queue with bounded, exponentially spaced attempts, each claimed for a
# lease; a webhook whose URL resolves to loopback/private/link-local addresses is refused with the SSRF policy on.
MONITOR_FAIL_THRESHOLD = envint("MONITOR_FAIL_THRESHOLD", 3, minimum=1)
MONITOR_RECOVER_THRESHOLD = envint("MONITOR_RECOVER_THRESHOLD", 2, minimum=1)
MONITOR_REMINDER_MINUTES = envint("MONITOR_REMINDER_MINUTES", 0, minimum=0)
MONITOR_REMINDER_MIN_MINUTES = envint("MONITOR_REMINDER_MIN_MINUTES", 30, minimum=1)
MONITOR_NOTIFY_ATTEMPTS = envint("MONITOR_NOTIFY_ATTEMPTS", 6, minimum=1)
MONITOR_NOTIFY_BACKOFF = envfloat("MONITOR_NOTIFY_BACKOFF", 30.0)
MONITOR_NOTIFY_TIMEOUT = envfloat("MONITOR_NOTIFY_TIMEOUT", 10.0)
MONITOR_NOTIFY_LEASE = envint("MONITOR_NOTIFY_LEASE", 60, minimum=1)
MONITOR_NOTIFY_SWEEP_INTERVAL = envint("MONITOR_NOTIFY_SWEEP_INTERVAL", 30, minimum=1)
PANEL_BLOCK_PRIVATE_WEBHOOKS = envbool("PANEL_BLOCK_PRIVATE_WEBHOOKS", False)
PANEL_URL = envstr("PANEL_URL", "")
# Outgoing e-mail (alerts): Django's SMTP backend.
EMAIL_BACKEND = envstr("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = envstr("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = envbool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = envint("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = envstr("EMAIL_FROM", "doodba-panel@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# The most items one API list page returns, whatever ?limit= asks for.
API_MAX_PAGE_SIZE = envint("API_MAX_PAGE_SIZE", 1000, minimum=1)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "panel.accounts.authentication.ApiTokenAuthentication",
        # Django's session, but only once the session passed its second factor (when the user needs one).
        "panel.accounts.authentication.TwoFactorSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "panel.api_schema.PanelAutoSchema",
    "DEFAULT_PAGINATION_CLASS": "panel.api.PanelPagination",
    "PAGE_SIZE": envint("API_PAGE_SIZE", 100, minimum=1),
    "DEFAULT_PARSER_CLASSES": [
        "panel.api.PanelJSONParser",
        "panel.api.PanelFormParser",
        "panel.api.PanelMultiPartParser",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "panel.api.exception_handler",
}
# --- Environment lifecycle (deployments.lifecycle) ---
# How long Start and Restart wait for every container to run and Odoo to answer /web/health with pass.
LIFECYCLE_HEALTH_TIMEOUT = envfloat("LIFECYCLE_HEALTH_TIMEOUT", 300.0)
# How long docker compose stop/restart give a container to end before it is killed (compose's -t).
LIFECYCLE_STOP_TIMEOUT = envint("LIFECYCLE_STOP_TIMEOUT", 30)
# How long the delete page and API wait to list what an environment leaves running on its server.
LIFECYCLE_INVENTORY_TIMEOUT = envfloat("LIFECYCLE_INVENTORY_TIMEOUT", 20.0)

# --- Terminal (terminal) ---
# A ticket (POST, CSRF) opens one terminal websocket within this many seconds, once.
TERMINAL_TICKET_SECONDS = envfloat("TERMINAL_TICKET_SECONDS", 30.0)
# A session without a keystroke for this long ends; no session lasts longer than the maximum.
TERMINAL_IDLE_SECONDS = envfloat("TERMINAL_IDLE_SECONDS", 900.0)
TERMINAL_MAX_SECONDS = envfloat("TERMINAL_MAX_SECONDS", 4 * 3600.0)
# Seconds a connected socket may take to send its ticket before it is closed.
TERMINAL_OPEN_SECONDS = envfloat("TERMINAL_OPEN_SECONDS", 10.0)
# Recordings (asciicast v2, output only) stop growing past this size (the session goes on, unrecorded: noted).
TERMINAL_RECORDING_MAX_BYTES = envint("TERMINAL_RECORDING_MAX_BYTES", 64 * 1024 * 1024)
# Timeout of the short commands around a session (finding the container, ending its processes).
TERMINAL_COMMAND_TIMEOUT = envfloat("TERMINAL_COMMAND_TIMEOUT", 20.0)

# --- Mail catcher (mailcatcher) ---
# Compose services of a non-production environment that may be its mail catcher (MailHog or Mailpit), first found wins.
MAILCATCHER_SERVICES = envlist("MAILCATCHER_SERVICES", "smtp,mailhog,mailpit")
# The catcher's HTTP API port inside its container (reached over SSH direct-tcpip, never published).
MAILCATCHER_HTTP_PORT = envint("MAILCATCHER_HTTP_PORT", 8025, minimum=1)
# Bound on one request to the catcher's API (channel open, answer), and on finding its container.
MAILCATCHER_TIMEOUT = envfloat("MAILCATCHER_TIMEOUT", 10.0)
# Mails per page of the list, and the largest answer (one mail with its attachments) the panel reads.
MAILCATCHER_PAGE_SIZE = envint("MAILCATCHER_PAGE_SIZE", 50, minimum=1)
MAILCATCHER_MAX_BYTES = envint("MAILCATCHER_MAX_BYTES", 32 * 1024 * 1024, minimum=1024)
# How long the catcher's address and API kind are remembered (a failed request forgets them at once).
MAILCATCHER_ADDRESS_CACHE_SECONDS = envint("MAILCATCHER_ADDRESS_CACHE_SECONDS", 60, minimum=0)

SPECTACULAR_SETTINGS = {
    "TITLE": "Doodba Panel API",
    "DESCRIPTION": "Servers, projects, environments and jobs of a Doodba hosting panel.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # One enum for the outcome of a backup's verify and test restore (both fields use CheckStatus).
    "ENUM_NAME_OVERRIDES": {
        "CheckStatusEnum": "backups.models.CheckStatus",
        "EnvironmentKindEnum": "panel.inventory.choices.EnvironmentKind",
        "BackupKindEnum": "backups.models.BackupKind",
        "ChannelKindEnum": "monitoring.models.ChannelKind",
        "JobKindEnum": "panel.jobs.choices.JobKind",
        "HealthStateEnum": "monitoring.models.HealthState",
    },
}

LOG_LEVEL = envstr("PANEL_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"paramiko": {"level": "WARNING"}},
}
