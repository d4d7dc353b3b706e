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
