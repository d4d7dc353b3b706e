"""The optional Prometheus pull endpoint of a single-process (solo pool) worker: the SPEC's names exactly."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.otlp_receiver import wait_for
from tests.procs import celery_worker, free_port


@pytest.fixture(scope="module")
def scrape(redis_server):
    from tests.apps import tasks_app

    port = free_port()
    worker = celery_worker(
        "tests.apps.tasks_app",
        redis_server.url,
        "http://127.0.0.1:9",
        "celery,profile",
        name="pull",
        pool="solo",
        concurrency=1,
        env={"AGENSIUM_PROMETHEUS_PORT": str(port), "AGENSIUM_OTLP": "false"},
    )
    try:
        tasks_app.app.conf.broker_url = redis_server.url
        tasks_app.app.conf.result_backend = redis_server.url
        for i in range(3):
            tasks_app.ok.apply_async((i,), queue="profile").get(timeout=30)
        failed = tasks_app.fail.apply_async(queue="celery")
        with pytest.raises(ValueError):
            failed.get(timeout=30)
        url = f"http://127.0.0.1:{port}/metrics"
        yield wait_for(
            lambda: (lambda body: body if "celery_tasks_failed_total{" in body else None)(
                httpx.get(url, timeout=5).text
            ),
            timeout=30,
        )
    finally:
        worker.stop()
    assert "serves this worker's main process only" not in worker.output  # solo: the one process runs the tasks


def test_exact_prometheus_names_and_labels(scrape):
    assert 'celery_tasks_received_total{queue="profile",task_name="t.ok"} 3.0' in scrape
    assert 'celery_tasks_succeeded_total{queue="profile",task_name="t.ok"} 3.0' in scrape
    assert 'celery_tasks_failed_total{queue="celery",task_name="t.fail"} 1.0' in scrape
    assert 'celery_task_duration_seconds_bucket{le="1800",queue="profile",task_name="t.ok"} 3.0' in scrape
    assert 'celery_task_duration_seconds_count{queue="profile",task_name="t.ok"} 3.0' in scrape


def test_types_buckets_and_label_sets(scrape):
    families = {f.name: f for f in text_string_to_metric_families(scrape)}
    for name in ("celery_tasks_received", "celery_tasks_succeeded", "celery_tasks_failed"):
        assert families[name].type == "counter"
        for sample in families[name].samples:
            assert sample.name == name + "_total"
            assert set(sample.labels) == {"task_name", "queue"}
    duration = families["celery_task_duration_seconds"]
    assert duration.type == "histogram"
    les = [s.labels["le"] for s in duration.samples if s.name.endswith("_bucket") and s.labels["task_name"] == "t.ok"]
    assert les == ["5", "10", "30", "60", "120", "300", "600", "1200", "1800", "+Inf"]
    assert {frozenset(s.labels) - {"le"} for s in duration.samples} == {frozenset({"task_name", "queue"})}
