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
                if delay:
                    time.sleep(delay)
    if context.job.params.get("fail"):
        raise JobFailed("Failed on purpose.")
    return {"written": written}
