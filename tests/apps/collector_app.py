"""tasks_app plus the tasks the Collector drills need."""

import logging

from tests.apps.tasks_app import app, ok, sleep

__all__ = ["app", "ok", "sleep"]
log = logging.getLogger("collector_app")


@app.task(name="c.log_burst")
def log_burst(lines=200, size=20_000):
    """A burst of big log records (the memory_limiter drill)."""
    filler = "x" * size
    for i in range(lines):
        log.info("burst %d %s", i, filler)
    return lines


@app.task(name="c.export_failures")
def export_failures():
    """This child's count of failed OTLP exports and of items its full queues dropped, once every
    log record it queued has been exported or given up on (a flush of its logger provider)."""
    from otel_agensium.bootstrap import current
    from otel_agensium.exporters import EXPORT_FAILURES

    handle = current()
    if handle is not None and handle.logger_provider is not None:
        handle.logger_provider.force_flush(120_000)
    return {"failed": EXPORT_FAILURES.failed, "dropped": EXPORT_FAILURES.dropped}
