"""One error path: a broken hook raises under the test suite, and is counted, logged once and
exported as a metric otherwise; failed OTLP exports are exported as a metric too."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from otel_agensium import errors
from otel_agensium.exporters import span_exporter
from otel_agensium.settings import load
from tests.procs import free_port


@pytest.fixture
def counters():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    errors.install_metrics(provider)
    yield reader
    errors.uninstall_metrics()
    provider.shutdown()


def _points(reader: InMemoryMetricReader, name: str) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        out[tuple(sorted(point.attributes.items()))] = point.value
    return out


@errors.guarded
def _broken_hook(x: int) -> int:
    raise ZeroDivisionError(x)


def test_a_broken_hook_fails_the_test_suite():
    assert errors.raising()  # tests/conftest.py sets AGENSIUM_RAISE_HOOK_ERRORS
    with pytest.raises(ZeroDivisionError):
        _broken_hook(1)


def test_outside_the_tests_a_broken_hook_is_counted_logged_once_and_exported(monkeypatch, counters, caplog):
    monkeypatch.delenv(errors.RAISE_ENV)
    before = errors.HOOK_ERRORS["_broken_hook"]
    with caplog.at_level(logging.WARNING, logger="otel_agensium"):
        assert [_broken_hook(i) for i in range(3)] == [None, None, None]
    assert errors.HOOK_ERRORS["_broken_hook"] == before + 3
    assert _points(counters, errors.TELEMETRY_ERRORS) == {(("hook", "_broken_hook"),): 3}
    assert len([r for r in caplog.records if "hook _broken_hook failed" in r.getMessage()]) == (1 if not before else 0)


def test_a_fast_path_turned_off_is_not_silent(monkeypatch, counters):
    with pytest.raises(RuntimeError, match="probe: moved"):
        errors.degraded("probe", "moved")
    monkeypatch.delenv(errors.RAISE_ENV)
    assert errors.degraded("probe", "moved") is False
    assert _points(counters, errors.TELEMETRY_ERRORS) == {(("hook", "probe"),): 2}


def test_failed_exports_are_exported_as_a_metric(counters):
    settings = load({"endpoint": f"http://127.0.0.1:{free_port()}", "export_timeout": 0.5}, environ={})
    exporter = span_exporter(settings)
    tracer = TracerProvider().get_tracer("t")
    span = tracer.start_span("lost")
    span.end()
    exporter.export([span])  # nothing listens: refused
    exporter.export([span])
    assert _points(counters, errors.EXPORT_FAILURES) == {(("signal", "span"),): 2}
