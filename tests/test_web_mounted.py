"""A request to a FastAPI app mounted in another gets one server span and one duration point, named
by the whole route template (mount paths included), not one per app it passes through."""

from __future__ import annotations

import httpx

from tests.otlp_receiver import Receiver, wait_for
from tests.procs import uvicorn_app

PATHS = {
    "/top": "/top",
    "/v1/items/3": "/v1/items/{item_id}",
    "/tenants/acme/shop/items/4": "/tenants/{tenant_id}/shop/items/{item_id}",
}


def test_mounted_apps_are_measured_once_under_their_full_route(redis_server):
    with Receiver() as receiver:
        web, base = uvicorn_app("tests.apps.web_mounted:app", redis_server.url, receiver.endpoint, service="mounted")
        try:
            for path in PATHS:
                assert httpx.get(base + path, timeout=10).status_code == 200, path
            spans = wait_for(
                lambda: (lambda found: found if len(found) >= 3 else None)(
                    [s for s in receiver.spans() if s["kind"] == 2]
                ),
                timeout=30,
            )

            def durations():
                counts = {
                    p["attributes"].get("http.route"): p["dp"].count
                    for p in receiver.points("http.server.request.duration").values()
                }
                return counts if sum(counts.values()) >= 3 else None

            counts = wait_for(durations, timeout=30)
        finally:
            web.stop()
    assert sorted(s["name"] for s in spans) == sorted(f"GET {route}" for route in PATHS.values()), spans
    assert sorted(s["attributes"]["http.route"] for s in spans) == sorted(PATHS.values())
    assert counts == dict.fromkeys(PATHS.values(), 1), counts
