"""What other apps may do at fixed points of a deploy, without deployments importing them.

One point so far: ``after_snapshot``, right after a deploy dumped the database to the server (the
``Snapshot database`` step) and before the update runs. The backups app registers a hook there in its
``AppConfig.ready()`` that stores that very dump as a *pre-deploy* backup. The deploy's own automatic rollback
keeps using the dump on the server; a hook adds to the deploy and must not decide it:

- a hook that fails with a ``JobFailed``, a ``RemoteError`` or any other ``Exception`` is logged in the job
  (``⚠``) and the deploy goes on, protected by the dump on the server as before;
- a cancel request (``JobCanceled``) and a lost hold (``HoldLost``) end the deploy as they do in any step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from panel.jobs.runner import JobCanceled, JobContext
from panel.remote.session import HoldLost

if TYPE_CHECKING:
    from deployments.models import Deployment
    from deployments.pipeline import Pipeline

logger = logging.getLogger(__name__)

SnapshotHook = Callable[["JobContext", "Pipeline", "Deployment"], None]

_after_snapshot: dict[str, SnapshotHook] = {}


def register_after_snapshot(name: str, hook: SnapshotHook) -> None:
    """Run ``hook(context, pipeline, deployment)`` after each deploy's database snapshot (``deployment.db_snapshot``
    names the dump on the server). Registering a name again replaces its hook (``ready()`` may run twice)."""
    _after_snapshot[name] = hook


def unregister_after_snapshot(name: str) -> None:
    """Remove a hook registered under ``name`` (tests)."""
    _after_snapshot.pop(name, None)


def snapshot_taken(context: JobContext, pipeline: Pipeline, deployment: Deployment) -> None:
    """Run the ``after_snapshot`` hooks in name order; see the module docstring for what a failing one does."""
    for name in sorted(_after_snapshot):
        try:
            _after_snapshot[name](context, pipeline, deployment)
        except (JobCanceled, HoldLost):
            raise
        except Exception as exc:  # a hook adds to the deploy; the dump on the server still protects it
            logger.warning("deployment %s: the %s hook failed", deployment.pk, name, exc_info=True)
            context.write(f"⚠ {name} after the snapshot failed: {exc} The deploy goes on.")
