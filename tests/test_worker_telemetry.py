"""A real prefork worker under `opentelemetry-instrument`, a real Redis, a local OTLP receiver."""

from __future__ import annotations

import pytest

from tests.otlp_receiver import wait_for
from tests.procs import celery_worker

SEED_BUCKETS = [5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0]


@pytest.fixture(scope="module")
def worker(redis_server, receiver):
    proc = celery_worker("tests.apps.tasks_app", redis_server.url, receiver.endpoint, "celery,profile", name="metrics")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def workload(worker, redis_server):
    import otel_agensium
    from tests.apps import tasks_app

    # The publisher runs otel-agensium too (all exports off): it stamps the publish time.
    otel_agensium.configure(traces=False, metrics=False, logs=False, otlp=False)
    tasks_app.app.conf.broker_url = redis_server.url
    tasks_app.app.conf.result_backend = redis_server.url
    results = []
    results += [tasks_app.ok.apply_async((i,), queue="celery") for i in range(6)]
    results += [tasks_app.ok.apply_async((i,), queue="profile") for i in range(4)]
    fails = [tasks_app.fail.apply_async(queue="profile") for _ in range(2)]
    retry = tasks_app.retry.apply_async(queue="celery")
    incrs = [tasks_app.incr.apply_async(queue="celery") for _ in range(3)]
    sleeps = [tasks_app.sleep.apply_async((1.0,), queue="celery") for _ in range(2)]
    for r in results + incrs + sleeps:
        r.get(timeout=60)
    for r in fails:
        with pytest.raises(ValueError):
            r.get(timeout=60, propagate=True)
    assert retry.get(timeout=60) == "done"
    return {"incr_ids": [r.id for r in incrs]}


EXPECTED = {
    "celery_tasks_received": {
        ("celery", "t.ok"): 6,
        ("profile", "t.ok"): 4,
        ("profile", "t.fail"): 2,
        ("celery", "t.retry"): 2,
        ("celery", "t.incr"): 3,
        ("celery", "t.sleep"): 2,
    },
    "celery_tasks_succeeded": {
        ("celery", "t.ok"): 6,
        ("profile", "t.ok"): 4,
        ("celery", "t.retry"): 1,
        ("celery", "t.incr"): 3,
        ("celery", "t.sleep"): 2,
    },
    "celery_tasks_failed": {("profile", "t.fail"): 2},
    "celery_tasks_retried": {("celery", "t.retry"): 1},
}


def _by_queue_task(totals):
    return {(dict(k)["queue"], dict(k)["task_name"]): v for k, v in totals.items()}


def test_task_counters_exact_after_known_workload(receiver, workload):
    def settled():
        got = {name: _by_queue_task(receiver.totals(name)) for name in EXPECTED}
        return got if got == EXPECTED else None

    try:
        got = wait_for(settled, timeout=30)
    except AssertionError:
        got = {name: _by_queue_task(receiver.totals(name)) for name in EXPECTED}
    assert got == EXPECTED
    # received = succeeded + failed + retried (nothing in flight any more)
    for key, received in EXPECTED["celery_tasks_received"].items():
        finished = sum(
            got[n].get(key, 0) for n in ("celery_tasks_succeeded", "celery_tasks_failed", "celery_tasks_retried")
        )
        assert received == finished, key


def test_label_sets_are_exactly_task_name_and_queue(receiver, workload):
    for name in list(EXPECTED) + ["celery_task_duration_seconds"]:
        points = receiver.points(name)
        assert points, name
        assert {tuple(sorted(p["attributes"])) for p in points.values()} == {("queue", "task_name")}


def test_duration_histogram_buckets_unit_and_counts(receiver, workload):
    points = wait_for(lambda: receiver.points("celery_task_duration_seconds"))
    for point in points.values():
        assert point["kind"] == "histogram"
        assert point["unit"] == "s"
        assert list(point["dp"].explicit_bounds) == SEED_BUCKETS
        assert len(point["dp"].bucket_counts) == len(SEED_BUCKETS) + 1
    counts = _by_queue_task(receiver.totals("celery_task_duration_seconds"))
    # success and failure are timed, retries are not
    assert counts == {
        ("celery", "t.ok"): 6,
        ("profile", "t.ok"): 4,
        ("profile", "t.fail"): 2,
        ("celery", "t.retry"): 1,
        ("celery", "t.incr"): 3,
        ("celery", "t.sleep"): 2,
    }
    sleep_sum = sum(p["dp"].sum for p in points.values() if p["attributes"]["task_name"] == "t.sleep")
    assert 2.0 <= sleep_sum < 10.0


def test_queue_wait_histogram_recorded(receiver, workload):
    counts = wait_for(lambda: _by_queue_task(receiver.totals("celery_task_queue_wait_seconds")))
    assert counts.get(("celery", "t.ok")) == 6


def test_prefork_children_have_distinct_instance_ids(receiver, workload):
    # The two 1-second sleeps ran at the same time, so in both children.
    sleep_points = [
        p for p in receiver.points("celery_tasks_succeeded").values() if p["attributes"]["task_name"] == "t.sleep"
    ]
    child_ids = {p["resource"]["service.instance.id"] for p in sleep_points}
    assert len(child_ids) == 2, sleep_points
    parent_ids = {p["resource"]["service.instance.id"] for p in receiver.points("celery_tasks_received").values()}
    assert len(parent_ids) == 1
    assert not parent_ids & child_ids
    pids = {p["resource"].get("process.pid") for p in sleep_points}
    assert len(pids) in (1, 2)  # present when the process detector runs; never shared ids


def test_run_span_has_task_id_and_the_task_redis_call(receiver, workload):
    ids = set(workload["incr_ids"])

    def runs():
        found = [
            s for s in receiver.spans() if s["name"] == "run/t.incr" and s["attributes"].get("celery.task_id") in ids
        ]
        return found if len(found) == 3 else None

    run_spans = wait_for(runs)
    spans = receiver.spans()
    for run in run_spans:
        assert run["attributes"]["celery.task_name"] == "t.incr"
        children = [s for s in spans if s["parent_span_id"] == run["span_id"]]
        names = sorted(s["name"] for s in children)
        assert names == ["INCRBY"], names  # the task's own call; not the result-backend writes
        assert children[0]["trace_id"] == run["trace_id"]


def test_celery_own_redis_traffic_is_not_traced(receiver, workload):
    spans = receiver.spans()
    redis_spans = [s for s in spans if s["scope"] in ("otel_agensium.redis", "opentelemetry.instrumentation.redis")]
    assert redis_spans, "the task's own Redis calls are traced"
    assert {s["name"] for s in redis_spans} == {"INCRBY"}
    # nothing from broker polling, acks or result writes: each task has at most run + its calls
    assert all(s["parent_span_id"] for s in redis_spans)


def test_task_args_not_recorded_by_default(receiver, workload):
    for span in receiver.spans():
        assert "celery.args" not in span["attributes"]
        assert "celery.kwargs" not in span["attributes"]
