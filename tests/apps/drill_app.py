"""tasks_app plus the tasks the fault drills need."""

import os
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded  # noqa: F401  (raised inside soft_limit)

from tests.apps.tasks_app import BROKER, app

__all__ = ["app"]
_client = redis.Redis.from_url(BROKER)


@app.task(name="d.nap")
def nap(seconds=10.0, key="drill:nap"):
    _client.set(key, os.getpid())
    time.sleep(seconds)
    return seconds


@app.task(name="d.soft_limit", soft_time_limit=0.5)
def soft_limit():
    time.sleep(3)


@app.task(name="d.quick")
def quick(i=0):
    return i
