"""Celery beat monitoring against a real `celery beat` (one-second schedule) and a real redis-server."""

from __future__ import annotations

import json
import sys
import time
import uuid

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from otel_agensium.celery.beat import BEAT_FIELD
from otel_agensium.doctor.beat import beat_verdict
from tests.otlp_receiver import wait_for
from tests.procs import BIN, Proc, doctor_json, free_port, run_json

APP = "tests.apps.beat_app"
ENTRY = "every-second"


def _beat(broker: str, queue: str, port: int, schedule_file: str) -> Proc:
    env = {
        "TEST_BROKER_URL": broker,
        "TEST_BEAT_QUEUE": queue,
        "AGENSIUM_PROMETHEUS_PORT": str(port),
        "AGENSIUM_OTLP": "false",
        "AGENSIUM_LOGS": "false",
        "OTEL_SERVICE_NAME": "beat-test",
        "OTEL_PYTHON_DISTRO": "agensium",
        "OTEL_PYTHON_CONFIGURATOR": "agensium",
    }
    args = [
        str(BIN / "opentelemetry-instrument"),
        str(BIN / "celery"),
        "-A",
        APP,
        "beat",
        "-s",
        schedule_file,
        "--loglevel",
        "INFO",
    ]
    return Proc(args, env=env, name="celery beat")


def _scrape(port: int) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from the beat's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("celery_beat"):
                out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _one(samples: dict[str, dict[tuple, float]], name: str, entry: str = ENTRY) -> float:
    return samples[name][(("entry", entry), ("task_name", "t.ok"))]


def _messages(client: redis.Redis, queue: str) -> list[dict]:
    """Headers of the messages beat sent, oldest first (kombu LPUSHes; consumers BRPOP)."""
    return [json.loads(raw)["headers"] for raw in reversed(client.lrange(queue, 0, -1))]


def _doctor(broker: str, queue: str, tolerance: str) -> dict:
    env = {
        "TEST_BROKER_URL": broker,
        "TEST_BEAT_QUEUE": queue,
        "AGENSIUM_BEAT_TOLERANCE": tolerance,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
    }
    return doctor_json(APP, env, "--timeout", "2")


def test_beat_sends_due_times_lag_and_counts_are_exact(redis_server, tmp_path):
    queue = f"beat-{uuid.uuid4().hex[:8]}"
    port = free_port()
    client = redis.Redis.from_url(redis_server.url)
    beat = _beat(redis_server.url, queue, port, str(tmp_path / "schedule"))
    try:
        beat.wait_for_line("beat: Starting", timeout=60)
        wait_for(
            lambda: (
                _scrape(port).get("celery_beat_sends_total", {}).get((("entry", ENTRY), ("task_name", "t.ok")), 0) >= 4
            ),
            timeout=30,
            interval=0.1,
        )
        samples = _scrape(port)
        headers = _messages(client, queue)
        # A send between the scrape and LRANGE is a message newer than the scraped last send.
        last_sent = _one(samples, "celery_beat_entry_last_sent_timestamp_seconds")
        seen = [h for h in headers if h["agensium_sent_at"] <= last_sent]
        assert all(h["agensium_beat_entry"] == ENTRY for h in headers)
        assert all(h["celery_beat_task"] is True for h in headers)
        sends = _one(samples, "celery_beat_sends_total")
        assert sends == len(seen) >= 4 and len(headers) - len(seen) <= 1
        last = seen[-1]
        assert last_sent == last["agensium_sent_at"]  # the very float the message carries
        assert _one(samples, "celery_beat_entry_due_timestamp_seconds") == last["agensium_beat_due_at"]
        assert _one(samples, "celery_beat_entry_lag_seconds") == last["agensium_sent_at"] - last["agensium_beat_due_at"]
        lags = [h["agensium_sent_at"] - h["agensium_beat_due_at"] for h in seen]
        assert all(0 <= lag < 2.0 for lag in lags), lags  # generous: the machine may be loaded
        # Run k+1 is due one second after beat reserved run k (just before sending it).
        for k in range(len(seen) - 1):
            reserved = seen[k + 1]["agensium_beat_due_at"] - 1.0
            assert 0 <= seen[k]["agensium_sent_at"] - reserved < 0.5, (k, seen[k], seen[k + 1])
        next_due = _one(samples, "celery_beat_entry_next_due_timestamp_seconds")
        assert last_sent < next_due <= last_sent + 1.0
        hourly = _one(samples, "celery_beat_entry_next_due_timestamp_seconds", "hourly")
        assert 3500 < hourly - time.time() <= 3600
        assert (("entry", "hourly"), ("task_name", "t.ok")) not in samples.get("celery_beat_sends_total", {})
        tick = samples["celery_beat_next_tick_timestamp_seconds"][()]
        assert time.time() - 2 < tick <= time.time() + 1.0
        print(
            f"\nbeat: {int(sends)} sends of {ENTRY!r} == {len(seen)} messages; lag min/max "
            f"{min(lags) * 1000:.2f}/{max(lags) * 1000:.2f} ms"
        )

        report = _doctor(redis_server.url, queue, "1")["beat"]
        assert report["verdict"] == "ok", report
        assert report["data"]["entries"][ENTRY]["sends"] >= sends
        print(f"doctor, beat running: {report['detail']}")
    finally:
        beat.stop()
    assert "Traceback" not in beat.output
    time.sleep(2.5)  # beat promised a tick within a second; one-second tolerance
    report = _doctor(redis_server.url, queue, "1")["beat"]
    print(f"doctor, beat stopped: {report['detail']}")
    assert report["verdict"] == "FAIL"
    assert report["detail"].startswith("beat is down: it promised to wake up")
    assert report["data"]["late"] and report["data"]["late"][0].startswith(f"{ENTRY} due ")
    client.delete(queue, "agensium:beat:beat_app")


def test_beat_verdicts():
    now = 1000.0
    schedule = {"a": {}, "b": {}}
    alive = {
        BEAT_FIELD: {"next_tick": now + 1},
        "a": {"next_due": now + 5, "sends": 3, "lag": 0.001},
        "b": {"next_due": now - 30, "sends": 0},
    }
    assert beat_verdict({}, {}, 60, now)[0] == "skipped"
    assert beat_verdict(schedule, {}, 60, now)[0] == "warn"
    verdict, detail, _, _ = beat_verdict(schedule, alive, 60, now)
    assert verdict == "ok" and detail == "2 entries; a sent 3x, lag 1.0 ms; b sent 0x"
    verdict, detail, _, data = beat_verdict(schedule, alive, 10, now)
    assert verdict == "FAIL" and data["late"] == ["b due 30.0 s ago, last sent never"]
    verdict, detail, _, _ = beat_verdict({"a": {}}, alive, 60, now)
    assert detail.endswith("(1 entry; a sent 3x, lag 1.0 ms)")
    assert beat_verdict({"a": {}}, {}, 60, now)[1] == "the app's beat_schedule has 1 entry but no beat has reported"
    verdict, detail, _, data = beat_verdict({"a": {}, "c": {}}, alive, 60, now)
    assert verdict == "warn" and data["not_reported"] == ["c"] and data["not_in_schedule"] == ["b"]
    down = {**alive, BEAT_FIELD: {"next_tick": now - 100}}
    assert beat_verdict(schedule, down, 60, now)[1].startswith("beat is down: it promised to wake up 100.0 s ago")


CUSTOM_SCHEDULER = """
import json, sys, time
from celery import Celery
from celery.beat import Scheduler
import otel_agensium
from otel_agensium.celery.beat import instrument_scheduler

handle = otel_agensium.configure(otlp=False, logs=False, traces=False)
app = Celery("custom-beat", broker=sys.argv[1], set_as_current=False)
app.conf.beat_schedule = {"half-second": {"task": "t.ok", "schedule": 0.5, "options": {"queue": sys.argv[2]}}}
scheduler = Scheduler(app=app, lazy=False)  # a scheduler this process drives itself, no `celery beat`
beat = instrument_scheduler(scheduler, handle)
deadline = time.monotonic() + 2.2
while time.monotonic() < deadline:
    time.sleep(max(0.0, min(scheduler.tick(), deadline - time.monotonic())))
state = beat.snapshot()["half-second"]
print(json.dumps({"sends": state.sends, "errors": state.errors, "last_sent": state.last_sent, "lag": state.lag}))
"""


def test_a_scheduler_driven_by_the_app_itself(redis_server):
    queue = f"beat-custom-{uuid.uuid4().hex[:8]}"
    figures, _ = run_json([sys.executable, "-c", CUSTOM_SCHEDULER, redis_server.url, queue])
    client = redis.Redis.from_url(redis_server.url)
    headers = _messages(client, queue)
    assert figures["sends"] == len(headers) >= 4 and figures["errors"] == 0
    assert figures["last_sent"] == headers[-1]["agensium_sent_at"]
    assert headers[-1]["agensium_beat_entry"] == "half-second"
    client.delete(queue, "agensium:beat:custom-beat")
