"""The backlog the queue length hides, against real prefetching prefork workers and a real redis-server.

Two workers, two queues, priorities and ETA tasks mixed; every figure must equal what
was enqueued, reserved and scheduled, exactly:

* qa: worker A (concurrency 2, prefetch multiplier 3) and 12 long tasks in three
  priorities plus 3 countdown tasks: 2 run (acknowledged early), 6 are prefetched, 4 wait,
  3 are held for their countdown;
* qb: worker B (concurrency 1, prefetch multiplier 1) and 4 long tasks plus 2 ETA tasks:
  1 runs, 1 is prefetched, 2 wait, 2 are held;
* qc: no worker, 5 messages from an instrumented publisher (an ``agensium_sent_at`` header).
"""

from __future__ import annotations

import signal
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import redis
from celery import Celery
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_agensium.celery.backlog import RedisBacklog, parse_eta
from otel_agensium.celery.gauges import QueueGauges
from otel_agensium.celery.queues import CeleryQueues
from tests.otlp_receiver import wait_for
from tests.procs import RedisServer, celery_worker, doctor_json, run_json

APP = "tests.apps.tasks_app"
SENT_AGO = 100.0


@pytest.fixture(scope="module")
def broker():
    server = RedisServer().start()
    yield server
    server.stop()


def _expected(qa: str, qb: str, qc: str) -> dict[str, dict]:
    return {
        qa: {"waiting": 4, "unacked": 9, "eta_held": 3, "backlog": 10, "concurrency": 2, "load": 5.0},
        qb: {"waiting": 2, "unacked": 3, "eta_held": 2, "backlog": 3, "concurrency": 1, "load": 3.0},
        qc: {"waiting": 5, "unacked": 0, "eta_held": 0, "backlog": 5, "concurrency": 0, "load": None},
    }


def _collect(reader: InMemoryMetricReader) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for dp in metric.data.data_points:
                    out.setdefault(metric.name, {})[dp.attributes["queue"]] = dp.value
    return out


def _monitor_once(broker_url: str, queues: list[str]) -> dict:
    args = [sys.executable, "-m", "otel_agensium.cli", "monitor", "-A", APP, "--once", "--queues", ",".join(queues)]
    return run_json(args, {"TEST_BROKER_URL": broker_url})[0]


def _doctor_eta(broker_url: str) -> dict:
    return doctor_json(APP, {"TEST_BROKER_URL": broker_url, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})["eta"]


def test_backlog_figures_equal_what_was_enqueued_reserved_and_scheduled(broker, receiver):
    tag = uuid.uuid4().hex[:6]
    qa, qb, qc = f"bla-{tag}", f"blb-{tag}", f"blc-{tag}"
    expected = _expected(qa, qb, qc)
    env = {"AGENSIUM_LOGS": "false"}
    worker_a = celery_worker(
        APP,
        broker.url,
        receiver.endpoint,
        qa,
        name=f"bla{tag}",
        concurrency=2,
        env=env,
        extra_args=["--prefetch-multiplier", "3"],
    )
    worker_b = None
    provider = None
    try:
        worker_b = celery_worker(
            APP,
            broker.url,
            receiver.endpoint,
            qb,
            name=f"blb{tag}",
            concurrency=1,
            env=env,
            extra_args=["--prefetch-multiplier", "1"],
        )
        app = Celery(f"bl-{tag}", broker=broker.url, set_as_current=False)
        # ETA tasks first: sent after a full prefetch they would wait in the list like any other message.
        for _ in range(3):
            app.send_task("t.ok", queue=qa, countdown=600)
        time.sleep(1.0)
        for i in range(12):
            app.send_task("t.sleep", args=(60,), queue=qa, priority=(0, 5, 9)[i % 3])
        app.send_task("t.sleep", args=(60,), queue=qb)
        now = datetime.now(timezone.utc)
        app.send_task("t.ok", queue=qb, eta=now + timedelta(seconds=900))
        app.send_task("t.ok", queue=qb, eta=now + timedelta(seconds=7200))  # beyond visibility_timeout (3600)
        time.sleep(1.0)  # worker B takes its first task before the others arrive
        for _ in range(3):
            app.send_task("t.sleep", args=(60,), queue=qb)
        sent_at = time.time() - SENT_AGO
        for priority in (0, 9, 0, 9, 0):  # an instrumented publisher: the header is the publish time
            app.send_task("t.ok", queue=qc, priority=priority, headers={"agensium_sent_at": sent_at})

        watched = CeleryQueues(app, [qa, qb, qc], timeout=2.0, inspect_timeout=0.5)
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        QueueGauges(watched, provider, ttl=1.0).install()  # as in production: one read per collection

        def figures() -> dict[str, dict]:
            got = _collect(reader)
            return {
                queue: {
                    "waiting": got["celery_queue_length"].get(queue),
                    "unacked": got["celery_queue_unacked"].get(queue),
                    "eta_held": got["celery_queue_eta_held"].get(queue),
                    "backlog": got["celery_queue_backlog"].get(queue),
                    "concurrency": got["celery_queue_consumer_concurrency"].get(queue),
                    "load": got.get("celery_queue_load", {}).get(queue),
                }
                for queue in (qa, qb, qc)
            }

        # The workers settle within a second or two (prefetch, ETA timers): then every figure is exact.
        last: list[dict] = []
        try:
            wait_for(lambda: last.append(figures()) or last[-1] == expected, timeout=30, interval=0.5)
        except AssertionError:
            raise AssertionError(f"figures {last[-1] if last else None} != expected {expected}") from None
        got = _collect(reader)
        age = got["celery_queue_oldest_message_age_seconds"]
        assert SENT_AGO <= age[qc] < SENT_AGO + 60, age
        print(f"\nbacklog figures (exact): {figures()}\noldest age {qc}: {age[qc]:.1f} s (header)")

        # Per worker: the ETA tasks each holds, from the worker itself.
        def held() -> dict[str, int]:
            points = receiver.points("celery_worker_eta_tasks").values()
            return {
                p["attributes"]["queue"]: p["dp"].as_int
                for p in points
                if p["attributes"]["worker"].startswith(f"bl{p['attributes']['queue'][2]}{tag}@")
            }

        wait_for(lambda: held() == {qa: 3, qb: 2}, timeout=15)

        # `otel-agensium monitor --once` prints the same figures.
        once = _monitor_once(broker.url, [qa, qb, qc])["backlog"]
        for queue, want in expected.items():
            assert {k: once[queue][k] for k in want} == want, (queue, once[queue])

        # doctor: the 7200 s ETA is beyond the default visibility_timeout; the 600/900 s ones are not.
        report = _doctor_eta(broker.url)
        print(f"doctor eta: {report['detail']}")
        assert report["verdict"] == "warn"
        assert [(b["queue"], b["task"]) for b in report["data"]["beyond_visibility"]] == [(qb, "t.ok")]
        assert 7190 < report["data"]["beyond_visibility"][0]["seconds_ahead"] <= 7200
        assert report["data"]["eta_held"] == {qa: 3, qb: 2}

        # Without a header, a message's age counts from the first read that saw it at a tail.
        backlog = RedisBacklog(redis.Redis.from_url(broker.url))
        now = time.time()
        first = backlog.oldest_ages([qa, qb], now)
        later = backlog.oldest_ages([qa, qb], now + 7.5)
        assert first == {qa: 0.0, qb: 0.0} and later == {qa: 7.5, qb: 7.5}
        assert backlog.oldest_ages([qc], now)[qc] == now - sent_at
    finally:
        if provider is not None:
            provider.shutdown()
        worker_a.stop(signal.SIGKILL)
        if worker_b is not None:
            worker_b.stop(signal.SIGKILL)


def test_eta_header_parsing():
    assert parse_eta("2026-01-01T00:00:00+00:00") == 1767225600.0
    assert parse_eta("2026-01-01T00:00:00") == 1767225600.0  # naive: UTC
    assert parse_eta("2026-01-01T01:00:00+01:00") == 1767225600.0
    assert parse_eta(None) is None and parse_eta("soon") is None and parse_eta(5) is None


def test_eta_verdict_names_held_tasks_and_beat_countdowns():
    from celery import Celery

    from otel_agensium.doctor.eta import _beat_countdowns, eta_verdict

    assert eta_verdict(3600, 4, [], []) == (
        "ok",
        "4 tasks held for an ETA/countdown, none further ahead than visibility_timeout=3600 s",
        None,
    )
    verdict, detail, fix = eta_verdict(3600, 2, [("q", "t.far", 7200.4)], [])
    assert verdict == "warn" and "1 task held with an ETA up to 7200 s after delivery" in detail
    assert "(t.far on q)" in detail and "visibility_timeout" in fix
    app = Celery("eta-verdict", set_as_current=False)
    app.conf.beat_schedule = {
        "far": {"task": "t", "schedule": 60, "options": {"countdown": 5000}},
        "near": {"task": "t", "schedule": 60, "options": {"countdown": 60}},
    }
    assert _beat_countdowns(app, 3600) == ["beat entry far (countdown 5000 s)"]
