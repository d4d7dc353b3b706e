"""Nothing is imported for the first time off the main thread once ``configure()`` has run.

A prefork worker's parent forks its children while its export threads and metric reader run.
A module one of them is importing at that moment is copied into the child with its import
lock held, and nothing in the child will ever release it: the child's first export that
imports the same module blocks forever, and that child's spans, metrics and logs are lost
without a word (seen in CI: a worker child whose run spans never arrived; scale-out children
whose counters never reached Prometheus). ``configure()`` imports everything the export
paths need up front (otel_agensium/exporters.py, :func:`import_export_paths`).
"""

from __future__ import annotations

import json

import httpx
import pytest
from celery import Celery

from tests.otlp_receiver import wait_for
from tests.procs import celery_worker, free_port

QUEUE = "fork-imports"


@pytest.fixture(scope="module")
def watched(redis_server, receiver, tmp_path_factory):
    log = tmp_path_factory.mktemp("imports") / "imports.jsonl"
    probe, scrape = free_port(), free_port()
    worker = celery_worker(
        "tests.apps.import_watch_app",
        redis_server.url,
        receiver.endpoint,
        QUEUE,
        name="fork-imports",
        env={
            "TEST_IMPORT_LOG": str(log),
            "AGENSIUM_WORKER_PROBE_PORT": str(probe),
            "AGENSIUM_WORKER_PROBE_HOST": "127.0.0.1",
            "AGENSIUM_PROMETHEUS_PORT": str(scrape),
        },
        # children recycled while the parent's threads run: more forks than the first two
        extra_args=["--max-tasks-per-child", "2"],
    )
    try:
        # the parent's other threads: the probe server and the Prometheus endpoint answer requests
        for path in (f"{probe}/healthz", f"{probe}/readyz", f"{scrape}/metrics"):
            assert httpx.get(f"http://127.0.0.1:{path}", timeout=10).status_code == 200, path
        app = Celery("fork-imports-client", broker=redis_server.url, backend=redis_server.url)
        results = [app.send_task("t.incr", ("agensium:test:fork-imports",), queue=QUEUE) for _ in range(4)]
        results += [app.send_task("t.fail", queue=QUEUE)]
        for result in results:
            result.get(timeout=60, propagate=False)

        def exported():
            runs = [s for s in receiver.spans() if s["name"].startswith("run/t.")]
            succeeded = sum(v for k, v in receiver.totals("celery_tasks_succeeded").items() if ("queue", QUEUE) in k)
            ready = [s for s in receiver.spans() if s["name"] == "worker ready"]
            return len(runs) >= 5 and ready and succeeded == 4 and receiver.logs

        wait_for(exported, timeout=60)
        # the parent's reader has collected (and its exporters sent) more than once by now
        wait_for(lambda: len(receiver.metrics) >= 6, timeout=30)
    finally:
        worker.stop()
    yield [tuple(json.loads(line)) for line in log.read_text().splitlines()], worker.output


def test_the_worker_parent_imports_nothing_off_its_main_thread(watched):
    imports, _ = watched
    assert imports == [], "modules first imported off the main thread (thread, module): " + repr(sorted(set(imports)))


def test_a_prometheus_port_on_a_prefork_worker_says_what_it_misses(watched):
    """AGENSIUM_PROMETHEUS_PORT serves the main process only: one warning line says the children's
    task outcomes are not on it (tests/test_prometheus_pull.py: none with --pool solo)."""
    _, output = watched
    assert output.count("AGENSIUM_PROMETHEUS_PORT=") == 1, output[-3000:]
    assert "serves this worker's main process only" in output
