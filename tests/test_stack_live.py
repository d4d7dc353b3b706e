"""The whole data path through the real Collector, as the stack runs it.

A prefork worker under `opentelemetry-instrument`, a FastAPI app under uvicorn and
`otel-agensium monitor` send OTLP to otelcol-agensium running the shipped collector/config.yaml
(endpoints moved with --set). A real Prometheus scrapes its prometheus exporter and its own
metrics with the shipped prometheus.yml's jobs; traces go to a second otelcol-agensium standing
in for Tempo (OTLP gRPC, 4 MiB limit) and on to a decoding receiver; logs go to a receiver in
Loki's place. One set-up for the module; the tests only read.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx
import pytest
import yaml

from tests import prom
from tests.collector import AgensiumCollector, TempoStandIn
from tests.otlp_receiver import Receiver, wait_for
from tests.procs import ROOT, Proc, celery_worker, monitor_args, uvicorn_app

pytestmark = pytest.mark.skipif(prom.prometheus_binary() is None, reason="Debian package `prometheus` missing")

SEED_TASK_PANELS = (
    "Tasks per second",
    "Task duration p95",
    "Success rate",
    "Failed tasks",
    "Queue depth",
    "Active workers",
)
ROUNDS = 4
WORKER = "worker-live"
OK_BUCKETS = 'celery_task_duration_seconds_bucket{task_name="t.ok"}'


@dataclass
class Stack:
    prometheus: prom.PrometheusServer
    collector: AgensiumCollector
    tempo: Receiver
    loki: Receiver
    started: float
    task_ids: dict[str, list[str]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    from tests.apps import tasks_app

    tasks_app.app.conf.broker_url = redis_server.url
    tasks_app.app.conf.result_backend = redis_server.url
    procs: list = []
    server = None
    with Receiver() as tempo_sink, Receiver() as loki:
        try:
            tempo = TempoStandIn(f"{tempo_sink.endpoint}").start()
            procs.append(tempo)
            collector = AgensiumCollector(tempo.endpoint, loki.endpoint).start()
            procs.append(collector)
            otlp = collector.otlp_endpoint
            procs.append(
                celery_worker(
                    "tests.apps.tasks_app",
                    redis_server.url,
                    otlp,
                    "celery,profile",
                    name="live",
                    concurrency=2,
                    # The SDK sends a histogram's exemplars with the export that follows the measurement
                    # only, and the Collector's exporter shows the latest point's: an export interval
                    # longer than Prometheus's 1 s scrape interval lets a scrape see them (in production:
                    # 60 s exports, 15 s scrapes).
                    env={"OTEL_METRIC_EXPORT_INTERVAL": "2000"},
                )
            )
            monitor = Proc(
                monitor_args("tests.apps.tasks_app", "celery,profile"),
                name="monitor",
                env={
                    "TEST_BROKER_URL": redis_server.url,
                    "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
                    "OTEL_SERVICE_NAME": "monitor",
                    "OTEL_METRIC_EXPORT_INTERVAL": "500",
                },
            )
            procs.append(monitor)
            web, web_url = uvicorn_app(
                "tests.apps.web_app:app",
                redis_server.url,
                otlp,
                service="web",
                env={"TEST_QUEUE": "profile", "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "500"},
            )
            procs.append(web)
            monitor.wait_for_line("otel-agensium monitor: watching", timeout=30)
            server = prom.start_prometheus(tmp_path_factory.mktemp("prom"), scrape_configs=collector.scrape_configs())
            prom.wait_for_result(server, 'up{job="otel-collector"} == 1', timeout=30)
            live = Stack(server, collector, tempo_sink, loki, time.time())
            ids = live.task_ids
            # Traffic across several scrapes, so that rate() has two samples in its window.
            for round_no in range(ROUNDS):
                for i in range(3):
                    result = tasks_app.ok.apply_async((i,), queue="profile")
                    ids.setdefault("t.ok", []).append(result.id)
                    result.get(timeout=30)
                with pytest.raises(ValueError):
                    tasks_app.fail.apply_async(queue="celery").get(timeout=30)
                response = httpx.post(f"{web_url}/enqueue", timeout=10)
                ids.setdefault("t.incr", []).append(response.json()["task_id"])
                log_sleep = tasks_app.log_sleep.apply_async((0.05,), queue="celery")
                ids.setdefault("t.log_sleep", []).append(log_sleep.get(timeout=30))
                prom.wait_for_result(server, f"sum(celery_tasks_failed_total) >= {round_no + 1}", timeout=30)
            # Everything the tests read has arrived: 5 successes a round, every run span, every log line.
            prom.wait_for_result(
                server, f'sum(celery_tasks_succeeded_total{{job="{WORKER}"}}) >= {5 * ROUNDS}', timeout=30
            )
            wait_for(
                lambda: (
                    sum(1 for s in tempo_sink.spans() if s["name"].startswith("run/")) >= 6 * ROUNDS
                    and len(tempo_sink.spans()) >= 9 * ROUNDS
                ),
                timeout=30,
            )
            wait_for(
                lambda: sum(1 for r in loki.log_records() if str(r["body"]).startswith("log_sleep before")) >= ROUNDS,
                timeout=30,
            )
            yield live
        finally:
            if server is not None:
                prom.stop_prometheus(server)
            for proc in reversed(procs):
                proc.stop()


def _dashboards():
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        yield path.name, json.loads(path.read_text())


def _series(stack, selector):
    return [r["metric"] for r in prom.query(stack.prometheus, selector)["result"]]


def test_every_dashboard_and_alert_expression_runs(stack):
    exprs = [(f"{name}: {where}", expr) for name, dash in _dashboards() for where, expr in prom.dashboard_promql(dash)]
    exprs += [
        (f"alerts.yml: {name}", expr)
        for name, expr in prom.rules_promql(yaml.safe_load((ROOT / "alerts.yml").read_text()))
    ]
    assert len(exprs) > 20
    errors = []
    for where, expr in exprs:
        try:
            prom.query(stack.prometheus, prom.expand_grafana_variables(expr))
        except prom.PrometheusError as exc:
            errors.append(f"{where}: {exc}")
    assert not errors, "\n".join(errors)


def test_seed_task_panels_return_data(stack):
    checked = set()
    for _, dash in _dashboards():
        for where, expr in prom.dashboard_promql(dash):
            title = next((t for t in SEED_TASK_PANELS if t in where), None)
            if title is None:
                continue
            result = prom.wait_for_result(stack.prometheus, prom.expand_grafana_variables(expr), timeout=30)
            assert result, where
            checked.add(title)
    assert checked == set(SEED_TASK_PANELS)


def test_success_rate_over_finished_tasks(stack):
    # per round 3 t.ok + 1 t.incr + 1 t.log_sleep succeed, 1 t.fail fails: 5/6 = 83%
    value = prom.wait_for_result(
        stack.prometheus,
        "100 * sum(rate(celery_tasks_succeeded_total[5m])) / "
        "(sum(rate(celery_tasks_succeeded_total[5m])) + sum(rate(celery_tasks_failed_total[5m])))",
    )
    assert 70 <= float(value[0]["value"][1]) <= 95


def test_seed_names_labels_and_buckets_as_prometheus_stores_them(stack):
    worker = f'job="{WORKER}"'
    names = {m["__name__"] for m in _series(stack, f'{{{worker}, __name__=~"celery_.*"}}')}
    assert {
        "celery_tasks_received_total",
        "celery_tasks_succeeded_total",
        "celery_tasks_failed_total",
        "celery_task_duration_seconds_bucket",
        "celery_task_duration_seconds_sum",
        "celery_task_duration_seconds_count",
    } <= names, names
    for metric in _series(stack, f'{{{worker}, __name__=~"celery_tasks_.*_total|celery_task_duration_seconds_count"}}'):
        assert set(metric) == {"__name__", "job", "instance", "task_name", "queue"}, metric
    totals = {
        (m["metric"]["task_name"], m["metric"]["queue"]): float(m["value"][1])
        for m in prom.query(stack.prometheus, f"sum by (task_name, queue) (celery_tasks_succeeded_total{{{worker}}})")[
            "result"
        ]
    }
    assert totals == {("t.ok", "profile"): 3 * ROUNDS, ("t.incr", "profile"): ROUNDS, ("t.log_sleep", "celery"): ROUNDS}
    failed = prom.query(stack.prometheus, f'sum(celery_tasks_failed_total{{{worker}, task_name="t.fail"}})')
    assert float(failed["result"][0]["value"][1]) == ROUNDS
    buckets = {m["le"] for m in _series(stack, f'celery_task_duration_seconds_bucket{{{worker}, task_name="t.ok"}}')}
    assert buckets == {"5.0", "10.0", "30.0", "60.0", "120.0", "300.0", "600.0", "1200.0", "1800.0", "+Inf"}
    selector = '{job="monitor", __name__=~"celery_(queue_length|active_workers)"}'
    gauges = {(m["__name__"], m["queue"]) for m in _series(stack, selector)}
    assert gauges == {
        (name, queue) for name in ("celery_queue_length", "celery_active_workers") for queue in ("celery", "profile")
    }


def test_duration_exemplars_carry_trace_ids_of_run_spans(stack):
    runs = {s["trace_id"] for s in stack.tempo.spans() if s["name"] == "run/t.ok"}
    assert len(runs) == 3 * ROUNDS

    def exemplar_trace_ids():
        found = prom.query_exemplars(stack.prometheus, OK_BUCKETS, stack.started - 60, time.time() + 60)
        return {e["labels"].get("trace_id") for series in found for e in series["exemplars"]}

    trace_ids = wait_for(exemplar_trace_ids, timeout=30)
    assert trace_ids and trace_ids <= runs, trace_ids - runs


def test_log_records_carry_task_id_and_the_run_span_trace_id(stack):
    runs = {
        s["attributes"]["celery.task_id"]: s["trace_id"] for s in stack.tempo.spans() if s["name"] == "run/t.log_sleep"
    }
    assert set(runs) == set(stack.task_ids["t.log_sleep"])
    records = [r for r in stack.loki.log_records() if str(r["body"]).startswith("log_sleep before")]
    assert len(records) == ROUNDS
    for record in records:
        task_id = record["attributes"]["task_id"]
        assert record["trace_id"] == runs[task_id]
        assert record["resource"]["service.name"] == WORKER


def test_one_trace_from_http_request_to_worker_run(stack):
    for task_id in stack.task_ids["t.incr"]:
        run = next(s for s in stack.tempo.spans() if s["attributes"].get("celery.task_id") == task_id)
        names = {
            (s["name"], s["resource"]["service.name"]) for s in stack.tempo.spans() if s["trace_id"] == run["trace_id"]
        }
        assert names == {
            ("POST /enqueue", "web"),
            ("apply_async/t.incr", "web"),
            ("run/t.incr", WORKER),
            ("INCRBY", WORKER),
        }


def test_the_collector_own_up_series(stack):
    up = {m["metric"]["job"]: m["value"][1] for m in prom.query(stack.prometheus, "up")["result"]}
    assert up == {"otel-collector": "1", "otel-collector-internal": "1"}
    # The Collector's own counters carry no `_total` in 0.161 (its internal Prometheus reader).
    accepted = prom.wait_for_result(stack.prometheus, "sum(otelcol_receiver_accepted_spans)")
    assert float(accepted[0]["value"][1]) >= len(stack.tempo.spans())
