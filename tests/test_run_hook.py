"""The run hook also covers tracers Celery built before ``configure()`` ran.

A prefork worker (plain ``celery worker``, no ``opentelemetry-instrument``) whose app calls
``configure()`` from ``worker_process_init``: by then the child has built every task's tracer.
Its runs must still be counted and traced, exactly.
"""

from __future__ import annotations

import sys

import pytest
from celery import Celery

from tests.otlp_receiver import Receiver, wait_for
from tests.procs import BIN, Proc, run_json

QUEUE = "late"


@pytest.fixture(scope="module")
def late_worker(redis_server):
    with Receiver() as receiver:
        worker = Proc(
            [
                str(BIN / "celery"),
                *["-A", "tests.apps.late_app", "worker", "--pool", "prefork", "--concurrency", "2"],
                *["-Q", QUEUE, "-n", "late@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
            ],
            env={"TEST_BROKER_URL": redis_server.url, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint},
            name="late-worker",
        )
        try:
            worker.wait_for_line("ready.", timeout=60)
            app = Celery("late-client", broker=redis_server.url, backend=redis_server.url)
            oks = [app.send_task("late.ok", (i,), queue=QUEUE) for i in range(5)]
            fails = [app.send_task("late.fail", queue=QUEUE) for _ in range(2)]
            assert [r.get(timeout=60) for r in oks] == list(range(5))
            for r in fails:
                with pytest.raises(Exception, match="late.fail failed on purpose"):
                    r.get(timeout=60, propagate=True)
            yield receiver
        finally:
            worker.stop()


def test_counters_from_a_configure_in_worker_process_init_are_exact(late_worker):
    want = {"celery_tasks_succeeded": 5, "celery_tasks_failed": 2, "celery_task_duration_seconds": 7}

    def totals():
        got = {name: sum(v for k, v in late_worker.totals(name).items() if ("queue", QUEUE) in k) for name in want}
        return got if got == want else None

    wait_for(totals, timeout=30)


def test_runs_from_a_configure_in_worker_process_init_are_traced(late_worker):
    runs = wait_for(
        lambda: (lambda r: r if len(r) == 7 else None)(
            [s for s in late_worker.spans() if s["name"].startswith("run/late.")]
        ),
        timeout=30,
    )
    assert sorted(s["name"] for s in runs) == ["run/late.fail"] * 2 + ["run/late.ok"] * 5
    assert len({s["attributes"]["celery.task_id"] for s in runs}) == 7


_EAGER = r"""
import json
from celery import Celery
import otel_agensium

h = otel_agensium.configure(service_name="eager", metric_export_interval=60000, logs=False)
app = Celery("eager", broker="memory://", backend="cache+memory://")
app.conf.task_always_eager = True
app.conf.task_eager_propagates = True

@app.task(name="eager.boom")
def boom():
    raise ValueError("eager boom")

@app.task(name="eager.ok")
def ok():
    return 1

raised = 0
for call in (boom.delay, lambda: boom.apply(throw=True)):
    try:
        call()
    except ValueError:
        raised += 1
ok.delay()
h.shutdown()
print(json.dumps({"raised": raised}))
"""


def test_an_eager_run_that_propagates_its_exception_is_a_failure(tmp_path):
    """task_always_eager + task_eager_propagates (a unit-test set-up): Celery's tracer re-raises the
    task's exception before storing it and sends no task_failure. The run span is still an error and
    the failure is counted, as on a worker."""
    with Receiver() as receiver:
        out, _ = run_json([sys.executable, "-c", _EAGER], {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
        assert out["raised"] == 2
        runs = wait_for(
            lambda: (lambda r: r if len(r) == 3 else None)(
                [s for s in receiver.spans() if s["name"].startswith("run/eager.")]
            ),
            timeout=30,
        )
        failed = wait_for(lambda: receiver.totals("celery_tasks_failed"), timeout=30)
        succeeded = receiver.totals("celery_tasks_succeeded")
        exceptions = receiver.totals("celery_task_exceptions")
        durations = receiver.totals("celery_task_duration_seconds")
    booms = [s for s in runs if s["name"] == "run/eager.boom"]
    assert len(booms) == 2 and all(s["status"][0] == 2 for s in booms), booms  # ERROR
    assert all([name for name, _ in s["events"]] == ["exception"] for s in booms), booms
    assert [s["status"][0] for s in runs if s["name"] == "run/eager.ok"] == [0]
    assert {dict(k)["task_name"]: v for k, v in failed.items()} == {"eager.boom": 2}
    assert {dict(k)["task_name"]: v for k, v in succeeded.items()} == {"eager.ok": 1}
    assert sum(exceptions.values()) == 2
    assert sum(durations.values()) == 3
