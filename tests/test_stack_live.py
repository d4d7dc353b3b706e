"""The stack's PromQL against a real Prometheus that scraped what the package really produced.

A solo-pool worker and `otel-agensium monitor` (queue depth, live workers) serve the Prometheus pull
endpoint; Prometheus (Debian's binary) scrapes it
every second; every expression in the dashboards and alerts.yml must run without error, and the
seed's task panels must return data.
"""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from tests import prom
from tests.procs import ROOT, Proc, celery_worker, free_port

pytestmark = pytest.mark.skipif(prom.prometheus_binary() is None, reason="Debian package `prometheus` missing")

SEED_TASK_PANELS = ("Tasks per second", "Task duration p95", "Success rate", "Failed tasks", "Queue depth",
                    "Active workers")


@pytest.fixture(scope="module")
def prometheus(redis_server, tmp_path_factory):
    from tests.apps import tasks_app

    port = free_port()
    worker = celery_worker("tests.apps.tasks_app", redis_server.url, "http://127.0.0.1:9", "celery,profile",
                           name="live", pool="solo", concurrency=1,
                           env={"AGENSIUM_PROMETHEUS_PORT": str(port), "AGENSIUM_OTLP": "false"})
    monitor_port = free_port()
    monitor = Proc([sys.executable, "-m", "otel_agensium.cli", "monitor", "-A", "tests.apps.tasks_app",
                    "--queues", "celery,profile"], name="monitor",
                   env={"TEST_BROKER_URL": redis_server.url, "AGENSIUM_PROMETHEUS_PORT": str(monitor_port),
                        "AGENSIUM_OTLP": "false", "OTEL_SERVICE_NAME": "monitor"})
    server = None
    try:
        monitor.wait_for_line("otel-agensium monitor: watching", timeout=30)
        server = prom.start_prometheus(tmp_path_factory.mktemp("prom"),
                                       [f"127.0.0.1:{port}", f"127.0.0.1:{monitor_port}"])
        tasks_app.app.conf.broker_url = redis_server.url
        tasks_app.app.conf.result_backend = redis_server.url
        # Traffic across several scrapes, so that rate() has two samples in its window.
        prom.wait_for_result(server, "up == 1", timeout=30)
        for round_no in range(4):
            for i in range(3):
                tasks_app.ok.apply_async((i,), queue="profile").get(timeout=30)
            with pytest.raises(ValueError):
                tasks_app.fail.apply_async(queue="celery").get(timeout=30)
            prom.wait_for_result(server, f"sum(celery_tasks_failed_total) >= {round_no + 1}", timeout=30)
        yield server
    finally:
        if server is not None:
            prom.stop_prometheus(server)
        monitor.stop()
        worker.stop()


def _dashboards():
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        yield path.name, json.loads(path.read_text())


def test_every_dashboard_and_alert_expression_runs(prometheus):
    exprs = [(f"{name}: {where}", expr) for name, dash in _dashboards() for where, expr in prom.dashboard_promql(dash)]
    exprs += [(f"alerts.yml: {name}", expr)
              for name, expr in prom.rules_promql(yaml.safe_load((ROOT / "alerts.yml").read_text()))]
    assert len(exprs) > 20
    errors = []
    for where, expr in exprs:
        try:
            prom.query(prometheus, prom.expand_grafana_variables(expr))
        except prom.PrometheusError as exc:
            errors.append(f"{where}: {exc}")
    assert not errors, "\n".join(errors)


def test_seed_task_panels_return_data(prometheus):
    checked = set()
    for _, dash in _dashboards():
        for where, expr in prom.dashboard_promql(dash):
            title = next((t for t in SEED_TASK_PANELS if t in where), None)
            if title is None:
                continue
            result = prom.wait_for_result(prometheus, prom.expand_grafana_variables(expr), timeout=30)
            assert result, where
            checked.add(title)
    assert checked == set(SEED_TASK_PANELS)


def test_success_rate_over_finished_tasks(prometheus):
    # 12 successes and 4 failures were scraped: the ratio of the rates is 75%.
    value = prom.wait_for_result(
        prometheus,
        "100 * sum(rate(celery_tasks_succeeded_total[5m])) / "
        "(sum(rate(celery_tasks_succeeded_total[5m])) + sum(rate(celery_tasks_failed_total[5m])))",
    )
    assert 60 <= float(value[0]["value"][1]) <= 90
