"""Celery apps for the CLI error sweep (tests/test_cli_errors.py). Broker from TEST_BROKER_URL."""

import os

from celery import Celery

app = Celery("cli_app", broker=os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:1/0"))
app.conf.task_default_queue = "cli-sweep"
# An app whose own broker_url names a transport kombu does not know.
bad_transport = Celery("cli_bad_transport", broker="nonsense://broker:1/0")
not_an_app = 42
