"""A Celery app with a beat schedule for tests/test_beat.py. Broker TEST_BROKER_URL, queue TEST_BEAT_QUEUE."""

import os

from celery import Celery

BROKER = os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("TEST_BEAT_QUEUE", "beat")

app = Celery("beat_app", broker=BROKER)
app.conf.update(
    broker_connection_retry_on_startup=True,
    beat_schedule={
        "every-second": {"task": "t.ok", "schedule": 1.0, "args": (1,), "options": {"queue": QUEUE}},
        "hourly": {"task": "t.ok", "schedule": 3600.0, "options": {"queue": QUEUE}},
    },
)
