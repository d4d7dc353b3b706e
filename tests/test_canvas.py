"""Chain, group and chord traces from a real prefork worker: parent/child and link structure, exactly.

Each workflow is sent by a task (``c.start``) inside the worker, so its run span is the
workflow's root. Span names are those of the active tracing instrumentation
(``run/<task>`` for a run, ``apply_async/<task>`` for a publish).
"""

from __future__ import annotations

import uuid

import pytest
from celery import Celery

from tests.otlp_receiver import wait_for
from tests.procs import celery_worker

APP = "tests.apps.canvas_app"


@pytest.fixture(scope="module")
def canvas(redis_server, receiver):
    queue = f"canvas-{uuid.uuid4().hex[:6]}"
    worker = celery_worker(
        APP,
        redis_server.url,
        receiver.endpoint,
        queue,
        name=f"cv{queue[-6:]}",
        concurrency=3,
        env={"TEST_QUEUE": queue, "AGENSIUM_LOGS": "false"},
    )
    app = Celery(f"canvas-client-{queue}", broker=redis_server.url, set_as_current=False)
    try:
        yield app, queue
    finally:
        worker.stop()


def _workflow(receiver, app: Celery, queue: str, kind: str, runs: int) -> tuple[dict, list[dict]]:
    """(the c.start run span, every span of its trace) once ``runs`` run spans of the workflow arrived."""
    start_id = app.send_task("c.start", args=(kind,), queue=queue).id

    def spans() -> tuple[dict, list[dict]] | None:
        everything = receiver.spans()
        roots = [
            s for s in everything if s["name"] == "run/c.start" and s["attributes"].get("celery.task_id") == start_id
        ]
        if not roots:
            return None
        trace_spans = [s for s in everything if s["trace_id"] == roots[0]["trace_id"]]
        done = [s for s in trace_spans if s["name"].startswith("run/") and s is not roots[0]]
        return (roots[0], trace_spans) if len(done) >= runs else None

    return wait_for(spans, timeout=60, interval=0.2)


def _by_id(spans: list[dict]) -> dict[str, dict]:
    return {s["span_id"]: s for s in spans}


def _publish_of(run: dict, spans: dict[str, dict]) -> dict:
    publish = spans[run["parent_span_id"]]
    assert publish["name"] == "apply_async/" + run["name"].split("/", 1)[1], publish["name"]
    return publish


def test_chain_runs_nest_in_order(canvas, receiver):
    app, queue = canvas
    root, spans = _workflow(receiver, app, queue, "chain", runs=3)
    by_id = _by_id(spans)
    runs = [s for s in spans if s["name"] == "run/c.add"]
    assert len(runs) == 3
    # run 1 <- publish <- c.start; run k+1 <- publish <- run k
    first = next(r for r in runs if _publish_of(r, by_id)["parent_span_id"] == root["span_id"])
    order = [first]
    while len(order) < 3:
        order.append(next(r for r in runs if _publish_of(r, by_id)["parent_span_id"] == order[-1]["span_id"]))
    assert [r["attributes"]["celery.root_id"] for r in order] == [root["attributes"]["celery.task_id"]] * 3
    assert order[1]["attributes"]["celery.parent_id"] == order[0]["attributes"]["celery.task_id"]
    assert order[2]["attributes"]["celery.parent_id"] == order[1]["attributes"]["celery.task_id"]
    print(f"\nchain: c.start -> {' -> '.join(r['span_id'][:6] for r in order)} in trace {root['trace_id'][:8]}")


def test_group_members_are_siblings(canvas, receiver):
    app, queue = canvas
    root, spans = _workflow(receiver, app, queue, "group", runs=3)
    by_id = _by_id(spans)
    runs = [s for s in spans if s["name"] == "run/c.add"]
    assert len(runs) == 3
    assert {_publish_of(r, by_id)["parent_span_id"] for r in runs} == {root["span_id"]}
    groups = {r["attributes"].get("celery.group_id") for r in runs}
    assert len(groups) == 1 and None not in groups
    assert all(not r["links"] for r in runs)


def test_chord_callback_links_every_header_task(canvas, receiver):
    app, queue = canvas
    root, spans = _workflow(receiver, app, queue, "chord", runs=4)
    by_id = _by_id(spans)
    header = [s for s in spans if s["name"] == "run/c.slow"]
    callbacks = [s for s in spans if s["name"] == "run/c.total"]
    assert len(header) == 3 and len(callbacks) == 1
    callback = callbacks[0]
    assert {_publish_of(r, by_id)["parent_span_id"] for r in header} == {root["span_id"]}  # siblings
    assert len({r["attributes"]["celery.group_id"] for r in header}) == 1
    # the callback was published by one header task (the one that finished last) ...
    publisher = by_id[_publish_of(callback, by_id)["parent_span_id"]]
    assert publisher in header
    # ... and is linked to every header task it waited for, with their task ids
    links = {(link["trace_id"], link["span_id"]): link["attributes"] for link in callback["links"]}
    assert set(links) == {(r["trace_id"], r["span_id"]) for r in header}
    assert {a["celery.task_id"] for a in links.values()} == {r["attributes"]["celery.task_id"] for r in header}
    assert {a["celery.task_name"] for a in links.values()} == {"c.slow"}
    assert callback["attributes"]["celery.chord_group_id"] == header[0]["attributes"]["celery.group_id"]
    # The result backend's chord bookkeeping (Lua scripts: SCRIPT LOAD, EVALSHA on the group's keys)
    # is Celery's own traffic: no span; the tasks make no Redis call of their own.
    assert {s["name"].split("/")[0] for s in spans} == {"run", "apply_async"}, sorted({s["name"] for s in spans})
    print(
        f"\nchord: callback {callback['span_id'][:6]} child of {publisher['span_id'][:6]}, "
        f"links {sorted(span[:6] for _, span in links)}"
    )
