import pytest

from tests.otlp_receiver import Receiver
from tests.procs import RedisServer


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as rec:
        yield rec
