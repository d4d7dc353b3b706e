"""Canvas tasks for tests/test_canvas.py: a chain, a group and a chord started from inside a task.

Broker and result backend from TEST_BROKER_URL (the chord needs the Redis result backend).
"""

import os
import time

from celery import Celery, chain, chord, group

BROKER = os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("TEST_QUEUE", "canvas")

app = Celery("canvas_app", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue=QUEUE, worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True, result_expires=300
)


@app.task(name="c.add")
def add(x, y=1):
    return x + y


@app.task(name="c.slow")
def slow(x, seconds):
    time.sleep(seconds)
    return x


@app.task(name="c.total")
def total(values):
    return sum(values)


@app.task(name="c.start")
def start(kind):
    """Build and send one workflow from inside a traced run: the workflow's root span."""
    if kind == "chain":
        return chain(add.s(1), add.s(), add.s()).apply_async().id
    if kind == "group":
        return group(add.s(i) for i in range(3)).apply_async().id
    if kind == "chord":
        return chord([slow.s(1, 0.1), slow.s(2, 0.8), slow.s(3, 0.3)], total.s()).apply_async().id
    raise ValueError(kind)
