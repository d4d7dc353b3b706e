"""The health router served by uvicorn over HTTP, against a redis-server the test kills and restarts."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
import uuid

import httpx
import pytest

from otel_agensium.redact import describe, scrub
from tests.otlp_receiver import wait_for
from tests.procs import Proc, RedisServer, celery_worker, uvicorn_app

CLIENT_TIMEOUT = 3.0  # the spec: a dead Redis answers 503 within 3 s, never a hang


def _serve(broker: str, receiver, service: str, **env: str) -> tuple[Proc, str]:
    return uvicorn_app(
        "tests.apps.web_health:api",
        broker,
        receiver.endpoint,
        service=service,
        name=f"uvicorn {service}",
        health="/health",
        env={
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_BLRP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "AGENSIUM_HEALTH_TIMEOUT": "2",
            "AGENSIUM_HEALTH_CACHE_TTL": "1",
            **env,
        },
    )


def _get(base: str, path: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.get(base + path, timeout=CLIENT_TIMEOUT)  # raises if no answer within 3 s
    return response, time.monotonic() - started


@pytest.fixture(scope="module")
def stack(receiver):
    server = RedisServer().start()
    queue = f"agh-{uuid.uuid4().hex[:6]}"
    worker = web = None
    try:
        worker = celery_worker("tests.apps.tasks_app", server.url, receiver.endpoint, queue, name="health")
        web, base = _serve(server.url, receiver, "web-health", HEALTH_QUEUES=queue)
        yield {"redis": server, "worker": worker, "web": web, "base": base, "queue": queue}
    finally:
        if web is not None:
            web.stop()
        if worker is not None:
            worker.stop()
        server.stop()


def test_ready_200_with_redis_and_a_worker(stack):
    base = stack["base"]
    response = wait_for(lambda: (r := _get(base, "/health/ready")[0]).status_code == 200 and r, timeout=30)
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["redis"]["ok"] is True
    assert body["checks"]["workers"] == {**body["checks"]["workers"], "ok": True, "count": 1}
    assert response.headers["cache-control"] == "no-store"


def test_queue_shows_redis_workers_and_depths(stack):
    response, _ = _get(stack["base"], "/health/queue")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["redis"]["info"]["redis_version"]
    assert "executable" not in body["redis"]["info"]  # only the whitelisted INFO fields
    assert body["workers"]["count"] == 1 and body["workers"]["names"][0].startswith("health@")
    assert body["workers"]["by_queue"] == {stack["queue"]: 1}
    assert body["queues"]["lengths"] == {stack["queue"]: 0}
    assert body["broker"] == stack["redis"].url  # no password in this URL: shown as it is


def test_burst_of_probes_is_served_from_one_check(stack):
    base = stack["base"]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: _get(base, "/health/ready"), range(40)))
    assert {r.status_code for r, _ in results} == {200}
    ages = [r.json()["checks"]["redis"].get("age_s", 0) for r, _ in results]
    assert any(age > 0 for age in ages) or max(t for _, t in results) < 1.0  # cached answers were used


def test_redis_down_503_within_3s_then_back_to_200(stack):
    server, base = stack["redis"], stack["base"]
    wait_for(lambda: _get(base, "/health/ready")[0].status_code == 200, timeout=30)

    server.stop()  # SIGKILL the test's own redis-server
    killed = time.monotonic()
    latencies = []
    response = None
    while time.monotonic() - killed < 10:
        response, latency = _get(base, "/health/ready")  # every answer within the 3 s client timeout
        latencies.append(latency)
        if response.status_code == 503:
            break
        time.sleep(0.1)
    first_503 = time.monotonic() - killed
    assert response is not None and response.status_code == 503, response and response.text
    assert response.json()["status"] == "not ready"

    # one check may still show its answer from just before the kill (cache ttl 1 s); then both fail
    def both_failed():
        response = _get(base, "/health/ready")[0]
        checks = response.json()["checks"]
        return not checks["redis"]["ok"] and not checks["workers"]["ok"] and response

    body = wait_for(both_failed, timeout=10).json()
    assert body["checks"]["redis"]["error"] and body["checks"]["workers"]["error"]
    # while Redis is down: alive stays 200, and a burst of readiness probes all answer 503 in time
    alive, _ = _get(base, "/health")
    assert alive.status_code == 200 and alive.json() == {"status": "ok"}
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        burst = list(pool.map(lambda _: _get(base, "/health/ready"), range(20)))
    assert {r.status_code for r, _ in burst} == {503}
    queue_view, _ = _get(base, "/health/queue")
    assert queue_view.status_code == 503 and queue_view.json()["redis"]["ok"] is False
    print(
        f"\nredis killed: first 503 after {first_503:.2f} s; /health/ready latencies "
        f"{', '.join(f'{t:.3f}' for t in latencies)} s; burst max {max(t for _, t in burst):.3f} s"
    )

    server.start()  # the same port
    restarted = time.monotonic()

    def ready_again():
        return _get(base, "/health/ready")[0].status_code == 200

    wait_for(ready_again, timeout=90, interval=0.5)  # the worker reconnects to the broker first
    print(f"redis restarted on port {server.port}: /health/ready 200 again after {time.monotonic() - restarted:.1f} s")


def test_frozen_redis_503_within_3s_not_a_hang(stack):
    """SIGSTOP: connections are accepted but nothing answers; only the timeouts end the checks."""
    server, base = stack["redis"], stack["base"]
    wait_for(lambda: _get(base, "/health/ready")[0].status_code == 200, timeout=60, interval=0.5)
    pid = server.proc.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        latencies = []
        response = None
        while time.monotonic() - frozen < 15:
            response, latency = _get(base, "/health/ready")  # raises if no answer within 3 s
            latencies.append(latency)
            if response.status_code == 503 and not response.json()["checks"]["redis"]["ok"]:
                break
        assert response is not None and response.status_code == 503, response and response.text
        assert "Timeout" in response.json()["checks"]["redis"]["error"], response.text
        assert _get(base, "/health")[0].status_code == 200
        print(
            f"\nredis frozen: 503 after {time.monotonic() - frozen:.2f} s; /health/ready latencies "
            f"{', '.join(f'{t:.3f}' for t in latencies)} s"
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: _get(base, "/health/ready")[0].status_code == 200, timeout=60, interval=0.5)


# --- a Redis URL with a password --------------------------------------------------------

PASSWORD = f"pw-{uuid.uuid4().hex}"


def test_scrub_and_describe_hide_passwords():
    url = f"redis://:{PASSWORD}@127.0.0.1:1/0"
    assert PASSWORD not in scrub(f"cannot connect to {url}")
    assert PASSWORD not in describe(ValueError(f"bad {url} and {PASSWORD}"), [PASSWORD])
    assert "redis://:***@127.0.0.1:1/0" in scrub(url)


def test_password_never_in_health_bodies_logs_or_spans(receiver):
    server = RedisServer(password=PASSWORD).start()
    web = None
    worker = None
    try:
        queue = f"agp-{uuid.uuid4().hex[:6]}"
        worker = celery_worker("tests.apps.tasks_app", server.url, receiver.endpoint, queue, name="pw")
        web, base = _serve(server.url, receiver, "web-health-pw", HEALTH_REDIS_URL=server.url, HEALTH_QUEUES=queue)
        bodies = []
        ready = wait_for(lambda: (r := _get(base, "/health/ready")[0]).status_code == 200 and r, timeout=30)
        bodies.append(ready.text)
        queue_view, _ = _get(base, "/health/queue")
        assert queue_view.status_code == 200, queue_view.text
        assert queue_view.json()["redis"]["target"] == f"redis://:***@127.0.0.1:{server.port}/0"
        bodies += [queue_view.text, _get(base, "/health")[0].text]

        server.stop()  # now every check fails: the error text must be scrubbed too
        failing = wait_for(
            lambda: not (r := _get(base, "/health/ready")[0]).json()["checks"]["redis"]["ok"] and r, timeout=10
        )
        assert failing.status_code == 503 and failing.json()["checks"]["redis"]["error"]
        bodies += [failing.text, _get(base, "/health/queue")[0].text]
        web.wait_for_line("health check redis failed", timeout=10)

        web.stop()  # flushes the exporters
        web_output = web.output
        web = None
        for body in bodies:
            assert PASSWORD not in body, body
        assert PASSWORD not in web_output
        spans = wait_for(
            lambda: [s for s in receiver.spans() if s["resource"].get("service.name") == "web-health-pw"], timeout=10
        )
        assert any(s["attributes"].get("http.route") == "/health/ready" for s in spans), spans[:3]
        raw = b"".join(receiver.raw)
        assert PASSWORD.encode() not in raw
    finally:
        if web is not None:
            web.stop()
        if worker is not None:
            worker.stop()
        server.stop()
