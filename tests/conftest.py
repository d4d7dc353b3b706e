import pytest

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
