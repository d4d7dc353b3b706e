"""Lean Celery tracing (AGENSIUM_CELERY_INSTRUMENTATION=lean, the default) against contrib, both ways.

Real processes: a publisher process (tests/apps/publisher.py) in one mode, a prefork worker under
``opentelemetry-instrument`` in the other, a real Redis and a local OTLP receiver. The trace must
join in both directions: the context travels in the message headers the same way in both.
"""

from __future__ import annotations

import json

import pytest

from tests.otlp_receiver import wait_for
from tests.procs import BIN, Proc, celery_worker

LEAN_SCOPE = "otel_agensium.celery"
CONTRIB_SCOPE = "opentelemetry.instrumentation.celery"
KIND_PRODUCER, KIND_CONSUMER = 4, 5  # Span.SpanKind in trace.proto
STATUS_ERROR = 2


def publish(broker: str, endpoint: str, queue: str, mode: str) -> dict[str, str]:
    proc = Proc(
        [str(BIN / "python"), "-m", "tests.apps.publisher", queue],
        name=f"publisher {mode}",
        env={
            "TEST_BROKER_URL": broker,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_SERVICE_NAME": f"pub-{mode}",
            "AGENSIUM_CELERY_INSTRUMENTATION": mode,
            "AGENSIUM_LOG_STDOUT": "false",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    try:
        assert proc.proc.wait(90) == 0, proc.output
    finally:
        proc.stop()
    return json.loads([line for line in proc.lines if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def runs(redis_server, receiver):
    """Each direction: (ids the publisher printed, the spans of its trace), and the lean run spans."""
    out = {}
    for worker_mode, publisher_mode in (("lean", "contrib"), ("contrib", "lean")):
        queue = f"tracing-{worker_mode}"
        worker = celery_worker(
            "tests.apps.tasks_app",
            redis_server.url,
            receiver.endpoint,
            queue,
            name=f"tracing-{worker_mode}",
            env={"AGENSIUM_CELERY_INSTRUMENTATION": worker_mode},
        )
        try:
            ids = publish(redis_server.url, receiver.endpoint, queue, publisher_mode)

            def whole_trace(trace_id=ids["trace_id"]):
                spans = [s for s in receiver.spans() if s["trace_id"] == trace_id]
                runs = [s for s in spans if s["name"].startswith("run/")]
                return spans if len(runs) == 4 and any(s["name"] == "INCRBY" for s in spans) else None

            out[worker_mode] = (ids, wait_for(whole_trace, timeout=30))
        finally:
            worker.stop()
    return out


def _one(spans, name, **attrs):
    found = [s for s in spans if s["name"] == name and all(s["attributes"].get(k) == v for k, v in attrs.items())]
    assert len(found) == 1, (name, attrs, [(s["name"], s["attributes"]) for s in spans])
    return found[0]


@pytest.mark.parametrize(
    "worker_mode,publisher_scope,worker_scope",
    [
        ("lean", CONTRIB_SCOPE, LEAN_SCOPE),
        ("contrib", LEAN_SCOPE, CONTRIB_SCOPE),
    ],
)
def test_publisher_and_worker_in_different_modes_join_one_trace(runs, worker_mode, publisher_scope, worker_scope):
    ids, spans = runs[worker_mode]
    client = _one(spans, "client")
    publish = _one(spans, "apply_async/t.incr")
    run = _one(spans, "run/t.incr")
    redis_call = _one(spans, "INCRBY")
    assert (publish["scope"], run["scope"]) == (publisher_scope, worker_scope)
    assert (publish["kind"], run["kind"]) == (KIND_PRODUCER, KIND_CONSUMER)
    assert publish["parent_span_id"] == client["span_id"]
    assert run["parent_span_id"] == publish["span_id"]
    assert redis_call["parent_span_id"] == run["span_id"]
    assert run["attributes"]["celery.task_id"] == ids["incr"]
    assert run["attributes"]["celery.task_name"] == "t.incr"
    assert run["resource"]["service.name"] == f"worker-tracing-{worker_mode}"
    # publish spans of the three tasks, each the parent of its first run
    for task in ("fail", "retry"):
        parent = _one(
            spans,
            f"apply_async/t.{task}",
            **{"celery.task_id": ids[task]} if publisher_scope == LEAN_SCOPE else {"messaging.message.id": ids[task]},
        )
        first_run = [s for s in spans if s["name"] == f"run/t.{task}" and s["parent_span_id"] == parent["span_id"]]
        assert len(first_run) == 1


def test_lean_spans_carry_the_messaging_conventions_and_nothing_more(runs):
    ids, spans = runs["lean"]
    run = _one(spans, "run/t.incr")
    assert run["attributes"] == {
        "celery.task_id": ids["incr"],
        "celery.task_name": "t.incr",
        "messaging.system": "celery",
        "messaging.operation.type": "process",
        "messaging.operation.name": "run",
        "messaging.destination.name": "tracing-lean",
        "celery.root_id": ids["incr"],  # the workflow's first task (here the task itself): set at start by tracing.py
    }
    ids, spans = runs["contrib"]  # the lean publisher's side
    publish = _one(spans, "apply_async/t.incr")
    assert publish["attributes"] == {
        "celery.task_id": ids["incr"],
        "celery.task_name": "t.incr",
        "messaging.system": "celery",
        "messaging.operation.type": "send",
        "messaging.operation.name": "apply_async",
        "messaging.destination.name": "tracing-contrib",
    }
    # the publish span is current while the message is sent: kombu's LPUSH is not traced under it
    assert [s["name"] for s in spans if s["parent_span_id"] == publish["span_id"]] == ["run/t.incr"]


def test_lean_failure_records_the_exception_event_and_error_status(runs):
    ids, spans = runs["lean"]
    run = _one(spans, "run/t.fail", **{"celery.task_id": ids["fail"]})
    assert run["status"] == (STATUS_ERROR, "boom")
    events = [attrs for name, attrs in run["events"] if name == "exception"]
    assert len(events) == 1
    assert events[0]["exception.type"] == "ValueError"
    assert events[0]["exception.message"] == "boom"
    assert "Traceback" in events[0]["exception.stacktrace"]
    # a success has neither
    ok = _one(spans, "run/t.incr")
    assert ok["status"][0] != STATUS_ERROR and not ok["events"]


def test_lean_retry_is_a_second_run_under_the_first(runs):
    ids, spans = runs["lean"]
    attempts = [s for s in spans if s["name"] == "run/t.retry" and s["attributes"]["celery.task_id"] == ids["retry"]]
    assert len(attempts) == 2
    first = next(s for s in attempts if "celery.retries" not in s["attributes"])
    second = next(s for s in attempts if s["attributes"].get("celery.retries") == 1)
    assert first["attributes"]["celery.retry.reason"].startswith("Retry in 0s")
    assert first["status"][0] != STATUS_ERROR
    # the retry's message was published from inside the first run, by the lean worker
    republish = _one(spans, "apply_async/t.retry", **{"celery.task_id": ids["retry"]})
    assert republish["scope"] == LEAN_SCOPE and republish["parent_span_id"] == first["span_id"]
    assert second["parent_span_id"] == republish["span_id"]


def test_the_tasks_redis_call_is_a_lean_client_span(runs, redis_server):
    _, spans = runs["lean"]
    redis_call = _one(spans, "INCRBY")
    assert redis_call["scope"] == "otel_agensium.redis"
    assert redis_call["kind"] == 3  # CLIENT
    assert redis_call["attributes"] == {
        "db.system.name": "redis",
        "db.operation.name": "INCRBY",
        "db.namespace": "0",
        "server.address": "127.0.0.1",
        "server.port": redis_server.port,
    }
