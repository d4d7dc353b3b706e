"""AGENSIUM_SHUTDOWN_TIMEOUT: a worker, its recycled children and a web app stop on time whatever the
OTLP endpoint does (live, refusing connections, a black hole that accepts and never answers).

No timed assertion beyond "it exited by itself within budget + a generous margin" (the subprocess
wait's timeout): the measured seconds are printed in the ``[drill shutdown ...]`` lines.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.otlp_receiver import Receiver, wait_for
from tests.procs import BIN, BlackHole, Proc, Trickle, celery_worker, refusing_endpoint, uvicorn_app

BUDGET = 2.0  # AGENSIUM_SHUTDOWN_TIMEOUT in these tests; the export timeout stays at its 10 s default
MARGIN = 10.0  # machines are noisy: the bound is generous, the figures are printed
DROPPED_LINE = "otel-agensium: final flush stopped after"
STATES = ("live", "refusing", "blackhole")


@contextlib.contextmanager
def endpoint_in(state: str) -> Iterator[tuple[str, Receiver | None]]:
    if state == "live":
        with Receiver() as receiver:
            yield receiver.endpoint, receiver
    elif state == "refusing":
        yield refusing_endpoint(), None
    else:
        with BlackHole() as hole:
            yield hole.endpoint, None


def _drop_lines(proc: Proc) -> list[str]:
    """The report lines, as messages (the worker's and app's lines are JSON)."""
    out = []
    for line in proc.lines:
        if DROPPED_LINE in line:
            with contextlib.suppress(ValueError):
                line = json.loads(line)["message"]
            out.append(line)
    return out


def _stop_timed(proc: Proc) -> tuple[int, float]:
    started = time.monotonic()
    code = proc.stop(timeout=BUDGET + MARGIN)  # SIGTERM to the main process; SIGKILL to the group on timeout
    return code, time.monotonic() - started


@pytest.mark.parametrize("state", STATES)
def test_prefork_worker_and_recycled_children_stop_within_budget(redis_server, state):
    """20 tasks with --max-tasks-per-child 5 (children recycled on the way), then 2 tasks running at SIGTERM."""
    from tests.apps import tasks_app

    tasks_app.app.conf.broker_url = redis_server.url
    tasks_app.app.conf.result_backend = redis_server.url
    queue, key = f"shutdown-{state}", f"agensium:test:shutdown:{state}"
    client = redis.Redis.from_url(redis_server.url)
    client.delete(key)
    with endpoint_in(state) as (endpoint, receiver):
        worker = celery_worker(
            "tests.apps.tasks_app",
            redis_server.url,
            endpoint,
            queue,
            name=f"budget-{state}",
            concurrency=2,
            extra_args=["--max-tasks-per-child", "5"],
            env={"AGENSIUM_SHUTDOWN_TIMEOUT": str(BUDGET), "OTEL_METRIC_EXPORT_INTERVAL": "600000"},
        )
        try:
            started = time.monotonic()
            results = [tasks_app.incr.apply_async((key,), queue=queue) for _ in range(20)]
            for result in results:  # a recycled child that hung in its flush would hold these up
                result.get(timeout=BUDGET + MARGIN)
            tasks_seconds = time.monotonic() - started
            in_flight = [tasks_app.log_sleep.apply_async((1.0,), queue=queue) for _ in range(2)]
            wait_for(lambda: all(f"log_sleep before {r.id}" in worker.output for r in in_flight), timeout=30)
        finally:
            code, seconds = _stop_timed(worker)
        recycled = worker.output.count("tasks_app child exiting")
        dropped = _drop_lines(worker)
        print(
            f"\n[drill shutdown worker {state}] 20 tasks with {recycled} child exits in {tasks_seconds:.1f} s; "
            f"warm shutdown {seconds:.1f} s (budget {BUDGET:g} s), exit {code}; {len(dropped)} drop lines"
            + (f", the main process's: {dropped[-1]}" if dropped else "")
        )
        assert code == 0, worker.output[-3000:]  # exited by itself within budget + margin
        assert int(client.get(key)) == 20
        assert [r.get(timeout=5) for r in in_flight] == [r.id for r in in_flight]  # warm shutdown finished them
        assert recycled >= 3 + 2  # 20 tasks, 5 per child: at least 3 recycled, then the last two at shutdown
        if receiver is not None:
            assert not dropped, dropped
            totals = wait_for(lambda: receiver.totals("celery_tasks_succeeded"), timeout=10)
            assert totals[(("queue", queue), ("task_name", "t.incr"))] == 20
            assert totals[(("queue", queue), ("task_name", "t.log_sleep"))] == 2
        else:
            assert dropped, worker.output[-3000:]


def test_child_recycled_by_memory_limit_exits_within_budget_with_a_black_hole(redis_server):
    """--max-memory-per-child 1 (KiB): every task recycles its child, which flushes into a black hole."""
    from tests.apps import tasks_app

    tasks_app.app.conf.broker_url = redis_server.url
    tasks_app.app.conf.result_backend = redis_server.url
    with BlackHole() as hole:
        worker = celery_worker(
            "tests.apps.tasks_app",
            redis_server.url,
            hole.endpoint,
            "shutdown-memory",
            name="budget-memory",
            concurrency=1,
            extra_args=["--max-memory-per-child", "1"],
            env={"AGENSIUM_SHUTDOWN_TIMEOUT": str(BUDGET)},
        )
        try:
            started = time.monotonic()
            for i in range(3):  # one child at a time: each task waits for the previous child's exit
                assert tasks_app.ok.apply_async((i,), queue="shutdown-memory").get(timeout=BUDGET + MARGIN) == i
            seconds = time.monotonic() - started
            wait_for(lambda: len(_drop_lines(worker)) >= 2, timeout=BUDGET + MARGIN)
        finally:
            code, stop_seconds = _stop_timed(worker)
    print(
        f"\n[drill shutdown memory-recycled blackhole] 3 tasks, each in a new child, in {seconds:.1f} s; "
        f"{len(_drop_lines(worker))} drop lines; warm shutdown {stop_seconds:.1f} s"
    )
    assert worker.output.count("tasks_app child exiting") >= 3, worker.output[-3000:]  # 2 recycled + the last
    assert code == 0, worker.output[-3000:]


@pytest.mark.parametrize("state", STATES)
def test_uvicorn_app_stops_within_budget(redis_server, state):
    """uvicorn re-raises SIGTERM once the app has shut down (no atexit): the flush runs at lifespan shutdown."""
    with endpoint_in(state) as (endpoint, receiver):
        web, base = uvicorn_app(
            "tests.apps.web_app:app",
            redis_server.url,
            endpoint,
            service=f"web-budget-{state}",
            name=f"uvicorn-{state}",
            env={
                "AGENSIUM_SHUTDOWN_TIMEOUT": str(BUDGET),
                "OTEL_BSP_SCHEDULE_DELAY": "600000",
                "OTEL_METRIC_EXPORT_INTERVAL": "600000",
            },
        )
        try:
            codes = [httpx.get(f"{base}/items/{i}", timeout=10).status_code for i in range(20)]
        finally:
            code, seconds = _stop_timed(web)
        dropped = _drop_lines(web)
        print(
            f"\n[drill shutdown uvicorn {state}] 20 requests; stopped in {seconds:.1f} s (budget {BUDGET:g} s), "
            f"exit {code}" + (f"; {dropped[-1]}" if dropped else "")
        )
        assert codes == [200] * 20
        assert code in (0, -signal.SIGTERM), web.output[-3000:]  # not -SIGKILL: it exited by itself
        if receiver is not None:
            assert not dropped, dropped
            spans = [s for s in receiver.spans() if s["resource"]["service.name"] == f"web-budget-{state}"]
            assert len(spans) == 20  # all sent by the final flush (the periodic export was not due)
        else:
            assert len(dropped) == 1, web.output[-3000:]
            assert "20 spans" in dropped[0]


APP_SCRIPT = """
import logging, time
import otel_agensium
from opentelemetry import trace
h = otel_agensium.configure(service_name="app-budget", bsp_schedule_delay=100)
tracer = trace.get_tracer("app")
for _ in range(10):
    tracer.start_span("before").end()
time.sleep(0.5)  # the batch processor is exporting these (or stuck on them) when the app shuts down
for _ in range(5):
    tracer.start_span("after").end()
logging.getLogger("app").warning("one record")
started = time.monotonic()
flushed = h.force_flush(timeout_millis=500)
print(f"force_flush {flushed} after {time.monotonic() - started:.1f} s", flush=True)
started = time.monotonic()
h.shutdown()
print(f"shutdown after {time.monotonic() - started:.1f} s", flush=True)
"""


@pytest.mark.parametrize("state", ("refusing", "blackhole"))
def test_app_handle_force_flush_and_shutdown_are_bounded(state):
    """configure()'s handle: force_flush keeps to its timeout, shutdown() to the budget, the loss is counted."""
    with endpoint_in(state) as (endpoint, _):
        app = Proc(
            [str(BIN / "python"), "-c", APP_SCRIPT],
            name=f"app-{state}",
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "AGENSIUM_SHUTDOWN_TIMEOUT": str(BUDGET)},
        )
        try:
            code = app.proc.wait(BUDGET + MARGIN)
        finally:
            app.stop()
    dropped = _drop_lines(app)
    print(
        f"\n[drill shutdown app {state}] "
        + "; ".join(line for line in app.lines if line.startswith(("force_flush", "shutdown")))
        + f"; {dropped}"
    )
    assert code == 0, app.output[-3000:]
    assert "force_flush False after" in app.output
    assert len(dropped) == 1, app.output[-3000:]
    assert "15 spans" in dropped[0]  # 10 in flight, 5 queued: every one counted once
    assert "1 log record " in dropped[0]


def test_monitor_stops_within_budget_with_a_black_hole(redis_server):
    with BlackHole() as hole:
        monitor = Proc(
            [
                str(BIN / "python"),
                "-m",
                "otel_agensium.cli",
                "monitor",
                "--broker",
                redis_server.url,
                "--queues",
                "shutdown-monitor",
            ],
            name="monitor",
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": hole.endpoint,
                "AGENSIUM_SHUTDOWN_TIMEOUT": str(BUDGET),
                "OTEL_METRIC_EXPORT_INTERVAL": "600000",
                "OTEL_SERVICE_NAME": "monitor-budget",
            },
        )
        try:
            monitor.wait_for_line("otel-agensium monitor: watching", timeout=30)
        finally:
            code, seconds = _stop_timed(monitor)
    dropped = _drop_lines(monitor)
    print(
        f"\n[drill shutdown monitor blackhole] stopped in {seconds:.1f} s, exit {code}"
        + (f"; {dropped[-1]}" if dropped else "")
    )
    assert code == 0, monitor.output[-3000:]
    assert len(dropped) == 1 and "metric points" in dropped[0], monitor.output[-3000:]


@pytest.mark.parametrize("how", ["sigterm", "remote-control"])
def test_a_stopping_worker_spends_the_budget_once_whoever_stops_it(redis_server, how):
    """The children's final flushes and the main process's share one budget: with a black hole, the
    children spend it all and the main process says how little they left. Stopped by SIGTERM, or by
    ``celery control shutdown`` (a broadcast: Celery sends no ``worker_shutting_down`` for it)."""
    import socket

    from tests.apps import tasks_app

    tasks_app.app.conf.broker_url = redis_server.url
    tasks_app.app.conf.result_backend = redis_server.url
    queue, name = f"shutdown-once-{how}", f"once-{how}"
    with BlackHole() as hole:
        worker = celery_worker(
            "tests.apps.tasks_app",
            redis_server.url,
            hole.endpoint,
            queue,
            name=name,
            concurrency=2,
            env={"AGENSIUM_SHUTDOWN_TIMEOUT": str(BUDGET), "OTEL_METRIC_EXPORT_INTERVAL": "600000"},
        )
        try:
            assert [tasks_app.ok.apply_async((i,), queue=queue).get(timeout=BUDGET + MARGIN) for i in range(4)] == [
                0,
                1,
                2,
                3,
            ]
            if how == "remote-control":
                tasks_app.app.control.shutdown(destination=[f"{name}@{socket.gethostname()}"])
                code = worker.proc.wait(timeout=3 * BUDGET + MARGIN)
            else:
                code, _ = _stop_timed(worker)
        finally:
            worker.stop()
    dropped = _drop_lines(worker)
    print(f"\n[drill shutdown {how} blackhole] exit {code}; drop lines: {dropped}")
    assert code == 0, worker.output[-3000:]
    assert len(dropped) >= 2, worker.output[-3000:]  # the children's and the main process's
    assert "of it left by the worker's children" in dropped[-1], dropped


STALL_APP = r"""
import time
import otel_agensium
from opentelemetry import trace
otel_agensium.configure()
trace.get_tracer("t").start_span("s").end()
time.sleep(9.0)  # the span's export is stalled after 2 x 1 s + 5 s
print("app done", flush=True)
"""


def test_an_export_that_never_ends_is_said_once_and_the_app_exits_on_time():
    """An endpoint that keeps answering one byte at a time: the export's read timeout never fires.
    One warning line says the export is stalled (not silence); the app stops within the budget."""
    with Trickle() as trickle:
        app = Proc(
            [str(BIN / "python"), "-c", STALL_APP],
            name="app-trickle",
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": trickle.endpoint,
                "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
                "OTEL_BSP_SCHEDULE_DELAY": "100",
                "AGENSIUM_METRICS": "false",
                "AGENSIUM_LOGS": "false",
                "AGENSIUM_SHUTDOWN_TIMEOUT": str(BUDGET),
            },
        )
        try:
            code = app.proc.wait(9.0 + BUDGET + MARGIN)
        finally:
            app.stop()
    stalled = [line for line in app.lines if "has not returned after" in line]
    print(f"\n[drill stalled export] {stalled}; {_drop_lines(app)}")
    assert code == 0 and "app done" in app.output, app.output[-3000:]
    assert len(stalled) == 1 and "a span export to " in stalled[0], app.output[-3000:]
