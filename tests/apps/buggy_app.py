"""input_app with otel-agensium's internals broken on purpose (drill 7: telemetry bugs never fail the host).

Imported by ``celery -A tests.apps.buggy_app worker`` in the main process, before the pool
forks, so every process runs with:

* ``BoundedLabels.attributes`` / ``.exception_attributes`` raising: every Celery signal
  handler that counts something fails (received, prerun, postrun, failure, unknown ...);
* the logs context filter's helper (the bound-context lookup) raising: ``ContextFilter``
  fails on every record;
* the OTLP log handler's severity mapping raising: every OTLP log record fails;
* the Redis span filter's decision (``redis_traffic.should_trace``) raising: every Redis
  command of the task, of the result backend and of kombu passes through it.

Every log record of the ``otel_agensium`` logger carries ``drill_pid`` so the test can
count the "hook ... failed" lines per process.
"""

import logging
import os
import time

from tests.apps.input_app import app

__all__ = ["app"]
BROKEN = "drill 7: broken on purpose"


def _raise(*_args, **_kwargs):
    raise RuntimeError(BROKEN)


class _BrokenContextVar:
    def get(self, *_args):
        raise RuntimeError(BROKEN)

    set = reset = get


def _break_everything() -> None:
    from otel_agensium import redis_traffic
    from otel_agensium.celery import utils
    from otel_agensium.logs import context, otlp

    utils.BoundedLabels.attributes = _raise
    utils.BoundedLabels.exception_attributes = _raise
    context._bound = _BrokenContextVar()
    otlp._severity = _raise
    redis_traffic.should_trace = _raise


class _Pid(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.drill_pid = os.getpid()
        return True


logging.getLogger("otel_agensium").addFilter(_Pid())
_break_everything()


@app.task(name="b.hook_errors")
def hook_errors(seconds=0.0):
    """What this process counted: {hook: failures} (after ``seconds``, so that both children answer)."""
    from otel_agensium.errors import HOOK_ERRORS

    time.sleep(seconds)
    return {"pid": os.getpid(), "errors": dict(HOOK_ERRORS)}
