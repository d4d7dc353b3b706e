"""Worker probes (/healthz, /readyz) against a real prefork worker and a redis-server this test kills."""

from __future__ import annotations

import statistics
import time
import uuid

import httpx
from celery import Celery

from tests.otlp_receiver import wait_for
from tests.procs import RedisServer, celery_worker, free_port

APP = "tests.apps.tasks_app"


_client = httpx.Client(timeout=5)  # one client: the figures are the probe's, not a new client's set-up


def _get(port: int, path: str) -> tuple[int, dict, float]:
    started = time.perf_counter()
    response = _client.get(f"http://127.0.0.1:{port}{path}")
    return response.status_code, response.json(), (time.perf_counter() - started) * 1000


def _ready(receiver, service: str) -> int | None:
    """The latest celery_worker_ready of that worker's main process (children report none)."""
    points = [
        p for p in receiver.points("celery_worker_ready").values() if p["resource"].get("service.name") == service
    ]
    assert len(points) <= 1, points
    return points[0]["dp"].as_int if points else None


def test_probes_answer_while_tasks_run_and_readiness_follows_the_broker(receiver):
    server = RedisServer().start()
    port = free_port()
    queue = f"probe-{uuid.uuid4().hex[:6]}"
    service = f"worker-probe{queue[-6:]}"
    worker = celery_worker(
        APP,
        server.url,
        receiver.endpoint,
        queue,
        name=f"probe{queue[-6:]}",
        concurrency=2,
        env={
            "AGENSIUM_WORKER_PROBE_PORT": str(port),
            "AGENSIUM_WORKER_PROBE_HOST": "127.0.0.1",
            "AGENSIUM_LOGS": "false",
        },
    )
    try:
        wait_for(lambda: _get(port, "/readyz")[0] == 200, timeout=30, interval=0.1)
        status, body, _ = _get(port, "/readyz")
        assert body == {"status": "ready", "reason": "consuming 1 queue(s)"}
        assert _get(port, "/nope")[0] == 404

        # Both pool processes busy with 1.5 s tasks (and more waiting): probes still answer at once.
        app = Celery(f"probe-{queue}", broker=server.url, backend=server.url, set_as_current=False)
        results = [app.send_task("t.sleep", args=(1.5,), queue=queue) for _ in range(4)]
        time.sleep(0.3)
        timings = {"/healthz": [], "/readyz": []}
        for _ in range(40):
            for path in timings:
                status, body, ms = _get(port, path)
                assert status == 200, (path, body)
                timings[path].append(ms)
            time.sleep(0.02)
        for path, ms in timings.items():
            print(
                f"\n{path} while tasks run: median {statistics.median(ms):.2f} ms, max {max(ms):.2f} ms "
                f"over {len(ms)} probes"
            )
            assert max(ms) < 1000  # generous: a probe must never wait for the worker
        assert "loop_age_s" in _get(port, "/healthz")[1]  # prefork: the event loop is watched
        wait_for(lambda: _ready(receiver, service) == 1, timeout=15)
        assert [r.get(timeout=30) for r in results] == [1.5] * 4

        killed = time.monotonic()
        server.stop()  # SIGKILL: the broker is gone
        wait_for(lambda: _get(port, "/readyz")[0] == 503, timeout=30, interval=0.05)
        not_ready_after = time.monotonic() - killed
        status, body, _ = _get(port, "/readyz")
        print(f"/readyz 503 {not_ready_after * 1000:.0f} ms after redis-server was killed: {body}")
        assert body["status"] == "not ready" and "reconnecting" in body["reason"]
        wait_for(lambda: _ready(receiver, service) == 0, timeout=15)  # what the dashboard shows
        outage = []
        for _ in range(25):  # 5 s of broker outage: liveness stays 200
            status, body, ms = _get(port, "/healthz")
            outage.append((status, ms))
            time.sleep(0.2)
        assert {s for s, _ in outage} == {200}, outage
        print(f"/healthz during the outage: 25 x 200, max {max(ms for _, ms in outage):.2f} ms")

        server.start()  # the same port again: the worker reconnects and is ready without a restart
        back = time.monotonic()
        wait_for(lambda: _get(port, "/readyz")[0] == 200, timeout=60, interval=0.1)
        print(f"/readyz 200 again {time.monotonic() - back:.1f} s after redis-server came back")
    finally:
        worker.stop()
        server.stop()
    ours = [line for line in worker.output.splitlines() if "otel_agensium" in line and "Traceback" in line]
    assert not ours and "hook ProbeIntegration" not in worker.output
    assert "worker probes on http://127.0.0.1:" in worker.output


def test_liveness_fails_only_for_a_stalled_loop_while_connected():
    """The decision alone, on the worker state the probe reads (attributes of Celery's own objects)."""
    from types import SimpleNamespace

    from celery.bootsteps import RUN, TERMINATE

    from otel_agensium.celery.worker_probe import ProbeState

    queue = SimpleNamespace(name="q")
    consumer = SimpleNamespace(
        blueprint=SimpleNamespace(state=RUN),
        connection=SimpleNamespace(connected=True),
        task_consumer=SimpleNamespace(queues=[queue]),
    )
    state = ProbeState(stall=5.0)
    state.worker = SimpleNamespace(consumer=consumer)
    state.has_loop, state.loop_stamp = True, time.monotonic()
    assert state.live()[0] == 200 and state.ready() == (200, {"status": "ready", "reason": "consuming 1 queue(s)"})
    state.loop_stamp = time.monotonic() - 10  # connected, loop silent for 10 s: wedged
    status, body = state.live()
    assert status == 503 and body["status"] == "stalled"
    consumer.connection = None  # reconnecting: a silent loop is expected, the process is alive
    assert state.live()[0] == 200
    assert state.ready() == (503, {"status": "not ready", "reason": "no broker connection (reconnecting)"})
    consumer.blueprint.state = TERMINATE
    assert state.ready()[1]["reason"] == "consumer not running (starting or reconnecting)"
    state.stopping = True
    assert state.live() == (503, {"status": "stopping"})
