"""One trace from an HTTP request served by uvicorn, through apply_async, the worker's run, and Redis."""

from __future__ import annotations

import httpx
import pytest

from tests.otlp_receiver import wait_for
from tests.procs import BIN, Proc, celery_worker, free_port


@pytest.fixture(scope="module")
def stack(redis_server, receiver):
    worker = celery_worker("tests.apps.tasks_app", redis_server.url, receiver.endpoint, "celery", name="web")
    port = free_port()
    web = Proc(
        [str(BIN / "python"), "-m", "uvicorn", "tests.apps.web_app:app", "--port", str(port), "--host", "127.0.0.1"],
        env={"TEST_BROKER_URL": redis_server.url, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
             "OTEL_SERVICE_NAME": "web", "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "500"},
        name="uvicorn",
    )
    try:
        web.wait_for_line("Uvicorn running", timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        web.stop()
        worker.stop()


def test_request_publish_run_and_redis_share_one_trace(stack, receiver):
    response = httpx.post(f"{stack}/enqueue", timeout=10)
    assert response.status_code == 200
    task_id = response.json()["task_id"]

    def run_span():
        runs = [s for s in receiver.spans() if s["name"] == "run/t.incr"
                and s["attributes"].get("celery.task_id") == task_id]
        return runs[0] if runs else None

    run = wait_for(run_span, timeout=30)
    trace_spans = wait_for(lambda: [s for s in receiver.spans() if s["trace_id"] == run["trace_id"]]
                           if len([s for s in receiver.spans() if s["trace_id"] == run["trace_id"]]) >= 4 else None)
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
    names = wait_for(lambda: {m.name for req in receiver.metrics for rm in req.resource_metrics
                              for sm in rm.scope_metrics for m in sm.metrics
                              if m.name.startswith("http.server")}, timeout=30)
    assert names
