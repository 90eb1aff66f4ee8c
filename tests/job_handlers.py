"""Job handlers used only by the tests, loaded into the test Celery worker via CELERY_IMPORTS.

They exercise the real job framework (worker, Redis, database, channel layer) with a predictable output.
"""

from __future__ import annotations

import time
from typing import Any

from panel.jobs.runner import JobContext, JobFailed, handler


@handler("test_emit")
def emit(context: JobContext) -> dict[str, Any]:
    """Write ``count`` numbered lines, ``delay`` seconds apart, in ``steps`` named steps."""
    count = int(context.job.params.get("count", 10))
    delay = float(context.job.params.get("delay", 0.0))
    steps = int(context.job.params.get("steps", 1))
    per_step = max(1, count // steps)
    written = 0
    for step in range(steps):
        with context.step(f"step {step + 1}"):
            for _ in range(per_step if step < steps - 1 else count - written):
                written += 1
                context.log.output("out", f"line {written}")
                if context.job.params.get("progress"):
                    context.progress("Emitting lines", written * 1000, count * 1000, force=written == count)
                if delay:
                    time.sleep(delay)
    if context.job.params.get("fail"):
        raise JobFailed("Failed on purpose.")
    return {"written": written}


def _hold_server(context: JobContext) -> Any:
    """Hold the job's server like an environment job holds its environment (a directory of its own)."""
    from panel.inventory.models import Server
    from panel.remote.session import hold
    from panel.remote.ssh import Target

    server = Server.objects.get(pk=context.job.server_id)
    return hold(
        Target.for_server(server), job_id=context.job.pk, directory="doodba-panel/test-hold",
        compose_project="test-hold", wait=30, on_message=context.write,
    )  # fmt: skip


@handler("test_remote_sleep", hold=_hold_server)
def remote_sleep(context: JobContext) -> dict[str, Any]:
    """Run a long ``sleep`` on the job's server (its shell's arguments carry ``marker``), streaming its output."""
    from panel.inventory.models import Server
    from panel.remote import run
    from panel.remote.ssh import Target

    target = Target.for_server(Server.objects.get(pk=context.job.server_id))
    seconds = str(context.job.params.get("seconds", 300))
    with context.step("sleep"):
        script = 'echo started; sleep "$1" & wait; echo "slept ($0)"'
        code = run(target, ["sh", "-c", script, context.job.params["marker"], seconds], on_output=context.log.output,
                   timeout=900, idle_timeout=900)  # fmt: skip
    if code:
        raise JobFailed(f"sleep ended with {code}")
    return {}
