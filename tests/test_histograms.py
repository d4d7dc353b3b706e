"""The in-process duration histograms give exactly the points the SDK's histogram gives.

The same measurements go into an SDK ``Histogram`` on one meter provider and into a
:class:`~otel_agensium.histograms.FastHistogram` on a provider whose reader merges the
bridge's points; what each reader collects is compared field by field, exemplars included.
"""

from __future__ import annotations

import os

import pytest
from opentelemetry.sdk.metrics import Histogram as SDKHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from otel_agensium.celery.metrics import DURATION_BUCKETS
from otel_agensium.histograms import BridgedReader, FastHistogram, create_histogram, install_bridge

SCOPE = ("otel_agensium.test", "1.0")
VALUES = [0.0003, 4.9, 5.0, 5.1, 29.0, 1799.0, 1800.0, 1800.5, 7200.0]


class _Reader(BridgedReader, InMemoryMetricReader):
    pass


def _providers():
    resource = Resource.create({"service.name": "histograms"})
    sdk_reader, fast_reader = InMemoryMetricReader(), _Reader()
    sdk_provider = MeterProvider(resource=resource, metric_readers=[sdk_reader])
    fast_provider = MeterProvider(resource=resource, metric_readers=[fast_reader])
    assert install_bridge(fast_provider, resource, [fast_reader]) is not None
    histograms = [
        create_histogram(
            p, p.get_meter(*SCOPE), SCOPE, "celery_task_duration_seconds", "s", "Run time.", DURATION_BUCKETS
        )
        for p in (sdk_provider, fast_provider)
    ]
    assert isinstance(histograms[0], SDKHistogram) and isinstance(histograms[1], FastHistogram)
    return (sdk_reader, fast_reader), histograms


def _points(reader):
    data = reader.get_metrics_data()
    found = {}
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                scope = (scope_metrics.scope.name, scope_metrics.scope.version)
                found[(scope, metric.name, metric.unit, metric.description)] = {
                    tuple(sorted(p.attributes.items())): p for p in metric.data.data_points
                }
    return found


def _instance(reader):
    """The service.instance.id the reader's collection is exported under (the fast provider has no SDK points)."""
    data = reader.get_metrics_data()
    return data.resource_metrics[0].resource.attributes.get("service.instance.id") if data else None


def _same(sdk, fast, with_exemplars=True):
    assert sdk.keys() == fast.keys()
    for key in sdk:
        assert sdk[key].keys() == fast[key].keys()
        for attrs, expected in sdk[key].items():
            got = fast[key][attrs]
            assert (got.count, got.min, got.max) == (expected.count, expected.min, expected.max)
            assert list(got.bucket_counts) == list(expected.bucket_counts)
            assert list(got.explicit_bounds) == list(expected.explicit_bounds)
            # The Prometheus exporter prints le= as Python prints the bound: 1800, not 1800.0.
            assert [type(b) for b in got.explicit_bounds] == [type(b) for b in expected.explicit_bounds]
            assert got.sum == pytest.approx(expected.sum)
            mine = sorted((e.value, e.trace_id, e.span_id) for e in got.exemplars)
            theirs = sorted((e.value, e.trace_id, e.span_id) for e in expected.exemplars)
            assert mine == (theirs if with_exemplars else [])


def test_same_points_as_the_sdk_histogram_exemplars_included():
    readers, histograms = _providers()
    tracer = TracerProvider().get_tracer("t")
    labels = [{"task_name": "a", "queue": "q1"}, {"task_name": "b", "queue": "q2"}]
    for i, value in enumerate(VALUES):
        with tracer.start_as_current_span(f"run/{i}"):
            for histogram in histograms:
                histogram.record(value, labels[i % 2])
    for value in (3.0, 61.0):  # outside any span: counted, no exemplar
        for histogram in histograms:
            histogram.record(value, labels[0])
    for histogram in histograms:  # ignored by both: negative, NaN, infinite
        for bad in (-1.0, float("nan"), float("inf")):
            histogram.record(bad, labels[0])
    sdk, fast = (_points(r) for r in readers)
    _same(sdk, fast)
    point = fast[next(iter(fast))][(("queue", "q1"), ("task_name", "a"))]
    assert point.count == 7 and list(point.bucket_counts) == [3, 0, 1, 0, 1, 0, 0, 0, 1, 1]
    assert len(point.exemplars) == 4  # one per bucket that a sampled span recorded into
    # Cumulative: a second collection repeats the counts; exemplars are reported once, as the SDK does.
    sdk, fast = (_points(r) for r in readers)
    _same(sdk, fast)
    assert all(not p.exemplars for points in fast.values() for p in points.values())


def test_points_merge_under_the_meters_own_scope():
    readers, histograms = _providers()
    histograms[1].record(1.0, {"task_name": "a"})
    fast_provider_scopes = [
        (sm.scope.name, sm.scope.version, [m.name for m in sm.metrics])
        for rm in readers[1].get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
    ]
    assert fast_provider_scopes == [("otel_agensium.test", "1.0", ["celery_task_duration_seconds"])]


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "lowmemory"),
        ("OTEL_METRICS_EXEMPLAR_FILTER", "always_on"),
    ],
)
def test_settings_it_does_not_reproduce_get_the_sdk_histogram(monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    reader = _Reader()
    provider = MeterProvider(metric_readers=[reader])
    assert install_bridge(provider, provider._sdk_config.resource, [reader]) is None  # noqa: SLF001
    histogram = create_histogram(provider, provider.get_meter(*SCOPE), SCOPE, "d", "s", "", DURATION_BUCKETS)
    assert isinstance(histogram, SDKHistogram)


def test_a_reader_that_does_not_merge_keeps_the_sdk_histogram():
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    assert install_bridge(provider, provider._sdk_config.resource, [reader]) is None  # noqa: SLF001


def test_exemplars_off_when_the_filter_is_always_off(monkeypatch):
    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", "always_off")
    readers, histograms = _providers()
    with TracerProvider().get_tracer("t").start_as_current_span("run"):
        for histogram in histograms:
            histogram.record(2.0, {"task_name": "a"})
    sdk, fast = (_points(r) for r in readers)
    _same(sdk, fast, with_exemplars=False)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_empty():
    readers, histograms = _providers()
    histograms[1].record(1.0, {"task_name": "a"})
    parent_instance = _instance(readers[1])
    pid = os.fork()
    if pid == 0:  # the child: its own points only, under its own service.instance.id
        code = 1
        try:
            before = _points(readers[1])
            histograms[1].record(2.0, {"task_name": "b"})
            child_instance = _instance(readers[1])
            (points,) = _points(readers[1]).values()
            fresh = before == {} and list(points) == [(("task_name", "b"),)]
            code = 0 if fresh and child_instance not in (None, parent_instance) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    (points,) = _points(readers[1]).values()
    assert list(points) == [(("task_name", "a"),)]  # the parent keeps its own


def test_a_second_create_returns_the_first_histogram():
    resource = Resource.create({"service.name": "histograms"})
    reader = _Reader()
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    install_bridge(provider, resource, [reader])
    meter = provider.get_meter(*SCOPE)
    first, second = (create_histogram(provider, meter, SCOPE, "d", "s", "", DURATION_BUCKETS) for _ in range(2))
    assert first is second
    first.record(1.0, {"a": "b"})
    (metrics,) = [sm.metrics for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics]
    assert [m.name for m in metrics] == ["d"]
