"""A Celery app for `otel-agensium doctor` (tests/test_doctor.py): routes, limits and a memory cap.

Broker from TEST_BROKER_URL. `doc.profile` is routed to the `profile` queue, everything else goes to
`celery`; time limits and worker_max_memory_per_child are set, so doctor passes on a healthy setup.
"""

import os

from celery import Celery

BROKER = os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("doctor_app", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue="celery",
    task_routes={"doc.profile": {"queue": "profile"}},
    task_soft_time_limit=30,
    task_time_limit=60,
    worker_max_memory_per_child=2_000_000,  # KiB: far above what a test child uses
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    result_expires=300,
)


@app.task(name="doc.ok")
def ok(x=1):
    return x


@app.task(name="doc.profile")
def profile(x=1):
    return x
