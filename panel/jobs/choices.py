"""Job states and kinds."""

from django.db import models


class JobStatus(models.TextChoices):
    """``queued → running → succeeded | failed | canceled | interrupted``."""

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELED = "canceled", "Canceled"
    INTERRUPTED = "interrupted", "Interrupted"


ACTIVE_STATES = (JobStatus.QUEUED, JobStatus.RUNNING)
TERMINAL_STATES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.INTERRUPTED)


class JobKind(models.TextChoices):
    """What a job does."""

    VALIDATE_SERVER = "validate_server", "Validate server"
    DEPLOY = "deploy", "Deploy"
    ROLLBACK = "rollback", "Roll back"
    BACKUP = "backup", "Back up"
    RESTORE = "restore", "Restore"
    COPY = "copy", "Copy production to staging"
    VERIFY = "verify", "Verify backup"
    TEST_RESTORE = "test_restore", "Test restore"
    CHECK = "check", "Check what runs"
    PREPARE_SERVER = "prepare_server", "Prepare server"
    INSTALL_PROXY = "install_proxy", "Install the proxy"
    READ_ANSWERS = "read_answers", "Read the project's answers"
    STOP = "stop", "Stop"
    START = "start", "Start"
    RESTART = "restart", "Restart"
    DESTROY = "destroy", "Destroy"


class LogStream(models.TextChoices):
    """Where a log line came from."""

    STDOUT = "out", "stdout"
    STDERR = "err", "stderr"
    PANEL = "panel", "panel"


# Jobs that change what an environment runs (its state shows "deploying" or "restoring" while one is active).
CHANGING_JOB_KINDS = (
    JobKind.DEPLOY,
    JobKind.ROLLBACK,
    JobKind.RESTORE,
    JobKind.COPY,
    JobKind.STOP,
    JobKind.START,
    JobKind.RESTART,
    JobKind.DESTROY,
)
# The environment lifecycle jobs (``deployments.lifecycle``): their state shows "stopping", "starting", ...
LIFECYCLE_JOB_KINDS = (JobKind.STOP, JobKind.START, JobKind.RESTART, JobKind.DESTROY)
