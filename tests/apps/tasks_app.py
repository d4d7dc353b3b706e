"""The Celery app the tests run in real worker processes. Broker from TEST_BROKER_URL."""

import logging
import os
import time

import redis
from celery import Celery

BROKER = os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("tasks_app", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue="celery",
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    result_expires=300,
)
log = logging.getLogger("tasks_app")


@app.task(name="t.ok")
def ok(x=1):
    log.info("ok task running with %s", x)
    return x


@app.task(name="t.fail")
def fail():
    raise ValueError("boom")


@app.task(name="t.retry", bind=True, max_retries=1, default_retry_delay=0)
def retry(self):
    if self.request.retries < 1:
        raise self.retry(countdown=0)
    return "done"


@app.task(name="t.incr")
def incr(key="agensium:test:counter"):
    client = redis.Redis.from_url(BROKER)
    return client.incr(key)


@app.task(name="t.sleep")
def sleep(seconds=0.5):
    time.sleep(seconds)
    return seconds


# -- logs (tests/test_logs.py) ---------------------------------------------------------------
from celery import signals  # noqa: E402
from celery.utils.log import get_task_logger  # noqa: E402

task_log = get_task_logger("tasks_app.tasks")


@app.task(name="t.log_sleep", bind=True)
def log_sleep(self, seconds=1.0):
    log.info("log_sleep before %s", self.request.id)
    task_log.info("log_sleep task logger %s", self.request.id)
    time.sleep(seconds)
    log.info("log_sleep after %s", self.request.id, extra={"slept": seconds, "detail": {"k": [1, 2]}})
    return self.request.id


@app.task(name="t.log_fail")
def log_fail():
    log.info("log_fail about to raise")
    raise ValueError("log boom")


@app.task(name="t.log_bound")
def log_bound(user_id):
    from otel_agensium.logs import bind

    with bind(user_id=user_id, agent="profile"):
        log.info("log_bound inside")
    log.info("log_bound outside")
    return user_id


@app.task(name="t.log_handlers")
def log_handlers():
    """Where this process's log records go: handler classes on root and on the task logger."""
    from otel_agensium.logs import installed_handlers

    ours = installed_handlers()

    def names(logger):
        return [("ours:" if h in ours else "") + f"{type(h).__module__}.{type(h).__name__}" for h in logger.handlers]

    return {"root": names(logging.getLogger()), "celery.task": names(logging.getLogger("celery.task"))}


@signals.worker_process_shutdown.connect
def _log_child_exit(**_):
    log.info("tasks_app child exiting")
