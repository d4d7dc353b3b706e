"""One trace from an HTTP request served by uvicorn, through apply_async, the worker's run, and Redis."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest

from tests.otlp_receiver import wait_for
from tests.procs import celery_worker, uvicorn_app


@pytest.fixture(scope="module")
def processes(redis_server, receiver):
    worker = celery_worker("tests.apps.tasks_app", redis_server.url, receiver.endpoint, "web-trace", name="web")
    try:
        web, base = uvicorn_app(
            "tests.apps.web_app:app",
            redis_server.url,
            receiver.endpoint,
            service="web",
            env={"TEST_QUEUE": "web-trace", "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "500"},
        )
    except BaseException:
        worker.stop()
        raise
    try:
        yield SimpleNamespace(base=base, web=web, worker=worker)
    finally:
        web.stop()
        worker.stop()


@pytest.fixture(scope="module")
def stack(processes):
    return processes.base


def test_request_publish_run_and_redis_share_one_trace(stack, processes, receiver):
    response = httpx.post(f"{stack}/enqueue", timeout=10)
    assert response.status_code == 200
    task_id = response.json()["task_id"]

    def run_span():
        runs = [
            s
            for s in receiver.spans()
            if s["name"] == "run/t.incr" and s["attributes"].get("celery.task_id") == task_id
        ]
        return runs[0] if runs else None

    try:
        run = wait_for(run_span, timeout=60)
    except AssertionError:
        names = sorted({(x["name"], x["resource"].get("service.name")) for x in receiver.spans()})
        worker_log = "\n".join(processes.worker.lines[-60:])
        raise AssertionError(f"no run span for {task_id}; spans: {names}; the worker printed:\n{worker_log}") from None
    trace_spans = wait_for(
        lambda: (
            [s for s in receiver.spans() if s["trace_id"] == run["trace_id"]]
            if len([s for s in receiver.spans() if s["trace_id"] == run["trace_id"]]) >= 4
            else None
        )
    )
    by_name = {s["name"]: s for s in trace_spans}
    server = by_name["POST /enqueue"]
    publish = by_name["apply_async/t.incr"]
    redis_call = by_name["INCRBY"]
    assert server["resource"]["service.name"] == "web"
    assert publish["resource"]["service.name"] == "web"
    assert run["resource"]["service.name"] == "worker-web"
    assert publish["parent_span_id"] == server["span_id"]
    assert run["parent_span_id"] == publish["span_id"]
    assert redis_call["parent_span_id"] == run["span_id"]
    # no ASGI send/receive spans, no spans for kombu's publish traffic
    assert not [s for s in trace_spans if s["name"].endswith((" http send", " http receive"))]
    assert sorted(by_name) == sorted(["POST /enqueue", "apply_async/t.incr", "run/t.incr", "INCRBY"])


def test_http_server_metrics_exported(stack, receiver):
    assert httpx.get(f"{stack}/hello", timeout=10).status_code == 200
    names = wait_for(
        lambda: {
            m.name
            for req in receiver.metrics
            for rm in req.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name.startswith("http.server")
        },
        timeout=30,
    )
    assert names


def _server_spans(receiver, trace_id=None):
    return [s for s in receiver.spans() if s["kind"] == 2 and (trace_id is None or s["trace_id"] == trace_id)]


def test_incoming_traceparent_is_continued_and_route_template_names_the_span(stack, receiver):
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    response = httpx.get(f"{stack}/items/42", headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}, timeout=10)
    assert response.status_code == 200
    spans = wait_for(lambda: _server_spans(receiver, trace_id), timeout=30)
    assert len(spans) == 1  # one server span: FastAPI's native telemetry does not add a second
    span = spans[0]
    assert span["name"] == "GET /items/{item_id}"
    assert span["parent_span_id"] == parent_id
    assert span["attributes"]["http.route"] == "/items/{item_id}"
    assert span["attributes"]["http.response.status_code"] == 200
    assert span["attributes"]["http.request.method"] == "GET"


def test_unhandled_exception_marks_span_error_and_counts_a_500(stack, receiver):
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4736"
    response = httpx.get(f"{stack}/boom", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}, timeout=10)
    assert response.status_code == 500
    span = wait_for(lambda: _server_spans(receiver, trace_id), timeout=30)[0]
    assert span["name"] == "GET /boom"
    assert span["attributes"]["http.response.status_code"] == 500
    raw = [
        s
        for r in receiver.traces
        for rs in r.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
        if s.trace_id.hex() == trace_id
    ][0]
    assert raw  # decoded above; status and the exception event:
    assert raw.status.code == 2  # ERROR
    assert [e.name for e in raw.events] == ["exception"]

    def duration_500():
        points = receiver.points("http.server.request.duration")
        return [
            p
            for p in points.values()
            if p["attributes"].get("http.response.status_code") == 500 and p["attributes"].get("http.route") == "/boom"
        ]

    point = wait_for(duration_500, timeout=30)[0]
    assert point["unit"] == "s"
    assert set(point["attributes"]) == {"http.request.method", "http.route", "http.response.status_code", "url.scheme"}


def test_contrib_instrumentation_still_selectable(redis_server, receiver):
    web, base = uvicorn_app(
        "tests.apps.web_app:app",
        redis_server.url,
        receiver.endpoint,
        service="web-contrib",
        name="uvicorn-contrib",
        env={"OTEL_BSP_SCHEDULE_DELAY": "100", "AGENSIUM_HTTP_INSTRUMENTATION": "contrib"},
    )
    try:
        assert httpx.get(f"{base}/items/7", timeout=10).status_code == 200
        spans = wait_for(
            lambda: [s for s in _server_spans(receiver) if s["resource"]["service.name"] == "web-contrib"], timeout=30
        )
        assert [s["name"] for s in spans] == ["GET /items/{item_id}"]
        assert spans[0]["scope"] == "opentelemetry.instrumentation.fastapi"
    finally:
        web.stop()
