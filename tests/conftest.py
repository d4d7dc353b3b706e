import pytest

from tests.otlp_receiver import Receiver
from tests.procs import RedisServer


@pytest.fixture(scope="module")
def redis_server():
    """A redis-server of the module's own on a free port: no test module sees another's messages."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as rec:
        yield rec
