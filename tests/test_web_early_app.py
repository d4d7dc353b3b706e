"""A FastAPI app created before ``configure()`` gets one server span and one duration series per
request: FastAPI's native telemetry, set up before ``configure()`` could turn it off, is turned off
when uvicorn starts the app (its lifespan builds the middleware stack)."""

from __future__ import annotations

import httpx

from tests.otlp_receiver import Receiver, wait_for
from tests.procs import uvicorn_app


def test_app_created_before_configure_is_measured_once(redis_server):
    with Receiver() as receiver:
        web, base = uvicorn_app("tests.apps.web_early:app", redis_server.url, receiver.endpoint, service="early")
        try:
            trace_id = "6bf92f3577b34da6a3ce929d0e0e4736"
            for _ in range(3):
                response = httpx.get(
                    f"{base}/items/7", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}, timeout=10
                )
                assert response.status_code == 200
            spans = wait_for(
                lambda: (lambda found: found if len(found) >= 3 else None)(
                    [s for s in receiver.spans() if s["trace_id"] == trace_id]
                ),
                timeout=30,
            )

            def durations():
                counts = {
                    key: point["dp"].count
                    for key, point in receiver.points("http.server.request.duration").items()
                    if point["attributes"].get("http.route") == "/items/{item_id}"
                }
                return counts if sum(counts.values()) >= 3 else None

            counts = wait_for(durations, timeout=30)
        finally:
            web.stop()
        assert [s["name"] for s in spans] == ["GET /items/{item_id}"] * 3, spans
        assert list(counts.values()) == [3], counts  # one series: no second one from native telemetry
        names = {
            m.name
            for req in receiver.metrics
            for rm in req.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        }
        assert "http.server.active_requests" not in names, names
