"""Fault drills against the real Collector (otelcol-agensium on the shipped collector/config.yaml).

Each drill prints what it held (run with -s to see the figures the README's Fault drills table
quotes). Settings that make a drill take seconds instead of minutes (a small queue, a short
metric_expiration, a low memory limit) are `--set` overrides of the shipped file.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import traceback
import uuid

import pytest

from tests import prom
from tests.collector import AgensiumCollector, TempoStandIn, own_metric
from tests.otlp_receiver import Receiver, wait_for
from tests.procs import Proc, celery_worker

pytestmark = pytest.mark.skipif(prom.prometheus_binary() is None, reason="Debian package `prometheus` missing")

EXPORT_WARNING = re.compile(r"otel-agensium: \w+ export to .* failed")
TASK_SPAN_BATCH = 4096  # processors::batch::send_batch_max_size in collector/config.yaml
TEMPO_LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def sinks():
    """Receivers in Tempo's (behind a stand-in Collector) and Loki's place, shared by the drills."""
    with Receiver() as tempo_sink, Receiver() as loki:
        yield tempo_sink, loki


@pytest.fixture
def tempo(sinks):
    standin = TempoStandIn(sinks[0].endpoint).start()
    yield standin
    standin.stop()


@pytest.fixture
def apps(redis_server):
    from tests.apps import collector_app

    collector_app.app.conf.broker_url = redis_server.url
    collector_app.app.conf.result_backend = redis_server.url
    return collector_app


def send_task_spans(endpoint: str, count: int, marker: str) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": "profile-worker",
                "service.instance.id": str(uuid.uuid4()),
                "host.name": "worker-7d9f8c6b5-x2x9q",
                "process.pid": 4242,
                "telemetry.sdk.language": "python",
            }
        )
    )
    processor = BatchSpanProcessor(
        OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=30),
        max_queue_size=count,
        max_export_batch_size=min(count, TASK_SPAN_BATCH),
        schedule_delay_millis=60_000,
    )
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("otel_agensium.celery")
    try:
        raise ValueError("profile 8121 failed: upstream answered 502 after 3 attempts")
    except ValueError as exc:
        error = exc
    for i in range(count):
        with tracer.start_as_current_span(
            "run/tasks.profile_user", kind=SpanKind.CONSUMER, record_exception=False, set_status_on_exception=False
        ) as span:
            span.set_attributes(
                {
                    "celery.task_id": str(uuid.uuid4()),
                    "celery.task_name": "tasks.profile_user",
                    "celery.action": "run",
                    "celery.state": "FAILURE",
                    "celery.hostname": "celery@worker-7d9f8c6b5",
                    "messaging.system": "redis",
                    "messaging.destination.name": "profile",
                    "messaging.message.id": str(uuid.uuid4()),
                    "messaging.operation.type": "process",
                    "celery.retries": 0,
                    "drill.marker": marker,
                    "drill.seq": i,
                }
            )
            span.record_exception(
                error, attributes={"exception.stacktrace": "".join(traceback.format_exception(error)) * 8}
            )
            span.set_status(Status(StatusCode.ERROR, str(error)))
    processor.force_flush(60_000)
    provider.shutdown()


def _marked(receiver: Receiver, marker: str) -> int:
    return sum(1 for s in receiver.spans() if s["attributes"].get("drill.marker") == marker)


def _worker(apps, collector: AgensiumCollector, queue: str, **kwargs) -> Proc:
    """A worker of tests.apps.collector_app on ``queue``, its telemetry to ``collector``."""
    return celery_worker("tests.apps.collector_app", apps.app.conf.broker_url, collector.otlp_endpoint, queue, **kwargs)


def _ok_tasks(apps, queue: str, count: int) -> None:
    """Send ``count`` t.ok tasks to ``queue`` at once, then wait for each result."""
    for r in [apps.ok.apply_async((1,), queue=queue) for _ in range(count)]:
        r.get(timeout=30)


def _ok_runs(tempo_sink: Receiver, service: str) -> int:
    """How many run/t.ok spans of ``service`` reached Tempo."""
    return sum(
        1 for s in tempo_sink.spans() if s["name"] == "run/t.ok" and s["resource"].get("service.name") == service
    )


def test_a_full_batch_of_task_spans_fits_tempo_grpc_limit(tempo, sinks):
    """Three full batches (3 x 4096 failed-task spans, ~2 KB each) reach a receiver limited to 4 MiB,
    in requests under the limit; with the exporter's byte cap removed, the same batches are refused."""
    tempo_sink, loki = sinks
    with AgensiumCollector(tempo.endpoint, loki.endpoint) as collector:
        before = len(tempo_sink.raw)
        send_task_spans(collector.otlp_endpoint, 3 * TASK_SPAN_BATCH, "fits")
        wait_for(lambda: _marked(tempo_sink, "fits") == 3 * TASK_SPAN_BATCH, timeout=60)
        sizes = [len(body) for body in tempo_sink.raw[before:]]
        assert own_metric(collector, "otelcol_exporter_send_failed_spans") == 0
    assert max(sizes) <= TEMPO_LIMIT
    total = sum(sizes)
    print(
        f"\n[drill tempo-batch] {3 * TASK_SPAN_BATCH} task spans, {total / 2**20:.1f} MiB in {len(sizes)} "
        f"requests, largest {max(sizes) / 2**20:.2f} MiB (limit 4 MiB)"
    )
    assert total > 2 * TEMPO_LIMIT  # the batches were big enough to matter

    uncapped = {
        "exporters::otlp_grpc/tempo::sending_queue::batch::max_size": "0",
        "exporters::otlp_grpc/tempo::retry_on_failure::enabled": "false",
    }
    with AgensiumCollector(tempo.endpoint, loki.endpoint, sets=uncapped) as collector:
        send_task_spans(collector.otlp_endpoint, TASK_SPAN_BATCH, "uncapped")
        # "Permanent error: rpc error: code = ResourceExhausted desc = grpc: received message after
        # decompression larger than max 4194304", dropped_items 4096
        wait_for(lambda: "larger than max 4194304" in collector.proc.output, timeout=60)
    assert _marked(tempo_sink, "uncapped") == 0


def test_collector_killed_and_restarted_mid_run(tempo, sinks, apps, tmp_path):
    """SIGKILL mid-run: no task fails; after the restart Prometheus holds exactly the workload (the
    SDK exports cumulative totals, so the new exporter state starts from the full count)."""
    tempo_sink, loki = sinks
    collector = AgensiumCollector(tempo.endpoint, loki.endpoint).start()
    server = None
    worker = _worker(
        apps,
        collector,
        "drill-restart",
        name="restart",
        concurrency=2,
        env={"OTEL_EXPORTER_OTLP_TIMEOUT": "2"},
    )
    try:
        server = prom.start_prometheus(tmp_path / "prom", scrape_configs=collector.scrape_configs())
        results = [apps.sleep.apply_async((0.05,), queue="drill-restart") for _ in range(100)]
        wait_for(lambda: sum(r.ready() for r in results) >= 30, timeout=60)
        collector.proc.stop(signal.SIGKILL)
        down_at = sum(r.ready() for r in results)
        time.sleep(3)
        collector.start()
        assert [r.get(timeout=60) for r in results] == [0.05] * 100  # no task failed
        expr = 'sum(celery_tasks_succeeded_total{job="worker-restart", queue="drill-restart"})'
        prom.wait_for_result(server, f"{expr} == 100", timeout=30)
        time.sleep(3)  # a few more exports and scrapes: still 100, never 100 + what was sent before the kill
        value = float(prom.query(server, expr)["result"][0]["value"][1])
        assert value == 100
        print(
            f"\n[drill collector-restart] killed after {down_at}/100 tasks, down 3 s: every task succeeded, "
            f"Prometheus total after restart {value:.0f}"
        )
    finally:
        if server is not None:
            prom.stop_prometheus(server)
        worker.stop()
        collector.stop()


def test_traces_backend_down_queue_keeps_then_drops_past_its_size(tempo, sinks, apps):
    """Tempo down: the exporter retries and queues; past queue_size new batches are dropped and counted.
    Every span is either delivered after Tempo is back or counted in enqueue_failed: none vanish."""
    tempo_sink, loki = sinks
    small_queue = {
        "exporters::otlp_grpc/tempo::sending_queue::queue_size": "3",
        "exporters::otlp_grpc/tempo::sending_queue::num_consumers": "1",
        "exporters::otlp_grpc/tempo::retry_on_failure::initial_interval": "200ms",
        "exporters::otlp_grpc/tempo::retry_on_failure::max_interval": "500ms",
        "processors::batch::timeout": "200ms",
    }
    with AgensiumCollector(tempo.endpoint, loki.endpoint, sets=small_queue) as collector:
        worker = _worker(apps, collector, "drill-tempo", name="tempo-down", concurrency=1)
        try:
            tempo.stop()
            sent = 0
            for _ in range(20):  # ~10 s of traffic, several batches a second
                _ok_tasks(apps, "drill-tempo", 3)
                sent += 3
                time.sleep(0.4)
            queued = own_metric(collector, "otelcol_exporter_queue_size")
            dropped = own_metric(collector, "otelcol_exporter_enqueue_failed_spans")
            tempo.start()

            def runs():
                return _ok_runs(tempo_sink, "worker-tempo-down")

            # What the queue kept (and the batch being retried) arrives once Tempo is back.
            wait_for(
                lambda: runs() + own_metric(collector, "otelcol_exporter_enqueue_failed_spans") >= sent, timeout=60
            )
            time.sleep(1)  # nothing more arrives
            delivered = runs()
            dropped = own_metric(collector, "otelcol_exporter_enqueue_failed_spans")
            failed = own_metric(collector, "otelcol_exporter_send_failed_spans")
            accepted = own_metric(collector, "otelcol_exporter_sent_spans")
        finally:
            worker.stop()
    print(
        f"\n[drill tempo-down] {sent} tasks in ~10 s with Tempo down, queue_size 3 (batches): "
        f"{queued:.0f} batches queued at the end of the outage, {delivered} run spans delivered after, "
        f"{dropped:.0f} spans dropped (enqueue_failed), {failed:.0f} send_failed, {accepted:.0f} sent"
    )
    assert dropped > 0  # the queue overflowed
    assert 0 < delivered < sent  # what the queue kept was delivered
    assert delivered + dropped == sent  # one run span per task: each delivered or counted as dropped
    assert accepted == delivered and failed == 0


def test_memory_limiter_refuses_a_burst_and_the_app_is_unaffected(tempo, sinks, apps):
    """A log burst over a low memory limit: the Collector refuses (503), every task succeeds, and every
    record that did not reach Loki is in a batch the worker counted as a failed export."""
    tempo_sink, loki = sinks
    low = {
        "processors::memory_limiter::limit_mib": "20",
        "processors::memory_limiter::spike_limit_mib": "8",
        "processors::memory_limiter::check_interval": "100ms",
    }
    batch = 128  # 128 x 50 kB = 6.4 MB a request, under the OTLP/HTTP receiver's 20 MiB body limit

    def burst_records():
        return sum(1 for r in loki.log_records() if str(r["body"]).startswith("burst"))

    with AgensiumCollector(tempo.endpoint, loki.endpoint, sets=low) as collector:
        worker = _worker(
            apps,
            collector,
            "drill-memory",
            name="memory",
            concurrency=1,
            env={"OTEL_EXPORTER_OTLP_TIMEOUT": "2", "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": str(batch)},
        )
        try:
            results = [apps.log_burst.apply_async((200, 50_000), queue="drill-memory") for _ in range(8)]
            assert [r.get(timeout=120) for r in results] == [200] * 8
            wait_for(lambda: own_metric(collector, "otelcol_receiver_refused_log_records"), timeout=30)
            # The task flushes the child's log queue first: every record sent or given up on.
            counted = apps.export_failures.apply_async(queue="drill-memory").get(timeout=150)
            warning = [line for line in worker.lines if EXPORT_WARNING.search(line)]
            # What the Collector accepted is still in its batch processor and exporter for a moment:
            # let it drain before counting what reached Loki (bounded; the assertion below decides).
            lost_bound = counted["failed"] * batch + counted["dropped"]
            with contextlib.suppress(AssertionError):
                wait_for(lambda: 1600 - burst_records() <= lost_bound, timeout=15)
            delivered = burst_records()
            refused = own_metric(collector, "otelcol_receiver_refused_log_records")
        finally:
            worker.stop()
    print(
        f"\n[drill memory-limiter] 8 tasks x 200 log lines of 50 kB against limit_mib 20: every task "
        f"succeeded; the Collector refused {refused:.0f} log records (retries included), {delivered} of 1600 "
        f"reached Loki; the worker child counted {counted['failed']} failed exports of <= {batch} records, "
        f"{counted['dropped']} items dropped"
    )
    assert warning
    assert refused > 0
    assert 1600 - delivered <= counted["failed"] * batch + counted["dropped"]


def test_recycled_child_series_expire_after_metric_expiration(tempo, sinks, apps, tmp_path):
    """--max-tasks-per-child 1: each child's series has its own instance; once both children are
    recycled, their series leave the exporter, and so Prometheus, after metric_expiration."""
    tempo_sink, loki = sinks
    sets = {"exporters::prometheus::metric_expiration": "4s"}
    with AgensiumCollector(tempo.endpoint, loki.endpoint, sets=sets) as collector:
        server = prom.start_prometheus(tmp_path / "prom", scrape_configs=collector.scrape_configs())
        worker = _worker(
            apps,
            collector,
            "drill-expire",
            name="expire",
            concurrency=1,
            extra_args=["--max-tasks-per-child", "1"],
        )
        try:
            series = 'celery_tasks_succeeded_total{job="worker-expire"}'
            prom.wait_for_result(server, 'up{job="otel-collector"} == 1', timeout=30)
            seen: set[str] = set()

            def one_more_child_seen(before: int) -> bool:
                seen.update(m["metric"]["instance"] for m in prom.query(server, series)["result"])
                return len(seen) > before

            # Each child's series is looked for right after its task: it lives metric_expiration (4 s)
            # past the child's last export, so a look after both tasks can miss the first on a slow machine.
            for i in range(2):
                before = len(seen)
                apps.ok.apply_async((i,), queue="drill-expire").get(timeout=30)
                wait_for(lambda before=before: one_more_child_seen(before), timeout=30, interval=0.25)
            seen_at = time.monotonic()
            prom.wait_for_result(server, f"absent({series})", timeout=30)
            gone_after = time.monotonic() - seen_at
        finally:
            worker.stop()
            prom.stop_prometheus(server)
    print(
        f"\n[drill metric-expiration] two recycled children's series (two instances) left Prometheus "
        f"{gone_after:.1f} s after both were seen (metric_expiration 4s)"
    )
    assert len(seen) == 2


@pytest.mark.skipif(
    not os.environ.get("AGENSIUM_DRILL_TEMPO_OUTAGE"),
    reason="long drill: set AGENSIUM_DRILL_TEMPO_OUTAGE=60 (seconds) to run it",
)
def test_traces_backend_down_with_the_shipped_queue(tempo, sinks, apps):
    """Tempo down for AGENSIUM_DRILL_TEMPO_OUTAGE seconds under steady traffic, shipped settings
    (queue 1000 batches, retries for 5 min): what the queue holds, and how long delivery takes after."""
    tempo_sink, loki = sinks
    outage = float(os.environ["AGENSIUM_DRILL_TEMPO_OUTAGE"])
    with AgensiumCollector(tempo.endpoint, loki.endpoint) as collector:
        worker = _worker(apps, collector, "drill-outage", name="outage", concurrency=2)
        try:
            tempo.stop()
            started, sent, peak = time.monotonic(), 0, 0.0
            while time.monotonic() - started < outage:
                _ok_tasks(apps, "drill-outage", 10)
                sent += 10
                peak = max(peak, own_metric(collector, "otelcol_exporter_queue_size"))
                time.sleep(0.2)
            tempo.start()
            back = time.monotonic()

            def runs():
                return _ok_runs(tempo_sink, "worker-outage")

            wait_for(lambda: runs() >= sent, timeout=outage + 120)
            took = time.monotonic() - back
            dropped = own_metric(collector, "otelcol_exporter_enqueue_failed_spans")
            failed = own_metric(collector, "otelcol_exporter_send_failed_spans")
        finally:
            worker.stop()
    print(
        f"\n[drill tempo-outage] Tempo down {outage:.0f} s: {sent} tasks, queue peak {peak:.0f} of 1000 batches, "
        f"all {runs()} run spans delivered {took:.0f} s after it came back; enqueue_failed={dropped:.0f} "
        f"send_failed={failed:.0f}"
    )
    assert runs() == sent and dropped == 0 and failed == 0
