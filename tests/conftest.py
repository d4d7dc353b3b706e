import os

import pytest

# A broken hook fails the test instead of logging a line (otel_agensium/errors.py), here and in
# every process the tests start with this environment; tests that break hooks on purpose unset it.
os.environ["AGENSIUM_RAISE_HOOK_ERRORS"] = "true"

from tests.otlp_receiver import Receiver
from tests.procs import RedisServer


@pytest.fixture(scope="session")
def redis_server():
    """One redis-server on a free port for the session (the test apps' Celery connection pools are
    process-wide); modules that must not see each other's messages use queues of their own."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as rec:
        yield rec
