"""The per-task and per-request duration histograms, aggregated in the process.

The SDK's ``Histogram.record`` costs 5-11 us per call (a ``Measurement`` object, a copy
and a sorted hash of the attributes, the exemplar filter and reservoir, two locks); the
task and request durations are recorded once per task or request, so that was a good
part of what metrics cost a worker. :class:`FastHistogram` keeps the same aggregation in
a dict per attribute set instead (bucket counts, sum, count, min, max, and per bucket the
last measurement taken inside a sampled span as its exemplar, as the SDK's
``AlignedHistogramBucketExemplarReservoir`` keeps it), and :class:`HistogramBridge` adds
the points to what our own metric readers collect, as the SDK's public point types
(``Metric``, ``Histogram``, ``HistogramDataPoint``, ``Exemplar``), under the same
instrumentation scope as the other instruments of its meter. Exporters, the Collector and
Prometheus see exactly what the SDK histogram gave: cumulative explicit-bucket points with
min, max and exemplars.

It is used only where its output is the SDK's: readers made by :mod:`otel_agensium.providers`
(they merge the points in ``_receive_metrics``, the method every ``MetricReader`` subclass
implements), cumulative temporality (``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``
unset or ``cumulative``), and exemplars per ``OTEL_METRICS_EXEMPLAR_FILTER`` (``trace_based``,
the default, or ``always_off``; ``always_on`` also falls back). Anywhere else
:func:`create_histogram` returns the SDK's own histogram. A forked child starts empty, as
the SDK's metric state does there (:mod:`otel_agensium.fork`).
"""

from __future__ import annotations

import os
import threading
import weakref
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from time import time_ns
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

# provider -> its bridge (set by providers.build_meter_provider)
_bridges: weakref.WeakKeyDictionary[Any, HistogramBridge] = weakref.WeakKeyDictionary()


def _exemplar_filter() -> str | None:
    """The SDK's exemplar filter setting when this module reproduces it (else None), and cumulative temporality."""
    temporality = os.environ.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "cumulative").strip().lower()
    exemplars = os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER", "trace_based").strip().lower()
    return exemplars if temporality == "cumulative" and exemplars in ("trace_based", "always_off") else None


class _Point:
    __slots__ = ("attributes", "counts", "exemplars", "max", "min", "start", "sum")

    def __init__(self, attributes: Mapping[str, Any], buckets: int) -> None:
        self.attributes = dict(attributes)
        self.counts = [0] * buckets
        self.exemplars: list[tuple[float, int, int, int] | None] = [None] * buckets
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        self.start = time_ns()


class FastHistogram:
    """``record(amount, attributes)`` as the SDK histogram's, aggregated here (see the module docstring)."""

    def __init__(self, name: str, unit: str, description: str, boundaries: Sequence[float], exemplars: bool) -> None:
        self.name, self.unit, self.description = name, unit, description
        self.boundaries = tuple(boundaries)  # as given: the Prometheus exporter prints le= the way Python does
        self._exemplars = exemplars
        self._points: dict[tuple, _Point] = {}
        self._lock = threading.Lock()

    def record(self, amount: float, attributes: Mapping[str, Any] | None = None, context: Any = None) -> None:
        if not amount >= 0 or amount == float("inf"):  # negative, NaN or infinite: the SDK ignores it too
            return
        attributes = attributes or {}
        key = tuple(attributes.items())
        index = bisect_left(self.boundaries, amount)
        exemplar = None
        if self._exemplars:
            span_context = trace.get_current_span(context).get_span_context()
            if span_context.trace_flags.sampled:
                exemplar = (amount, time_ns(), span_context.span_id, span_context.trace_id)
        with self._lock:
            point = self._points.get(key)
            if point is None:
                point = self._points[key] = _Point(attributes, len(self.boundaries) + 1)
            point.counts[index] += 1
            point.sum += amount
            if amount < point.min:
                point.min = amount
            if amount > point.max:
                point.max = amount
            if exemplar is not None:
                point.exemplars[index] = exemplar

    def collect(self, now: int, exemplars_since: int) -> Metric | None:
        """The cumulative points; exemplars taken after ``exemplars_since`` (each reader gets each once)."""
        with self._lock:
            snapshot = [
                (p.attributes, p.start, list(p.counts), p.sum, p.min, p.max, list(p.exemplars))
                for p in self._points.values()
            ]
        if not snapshot:
            return None
        points = [
            HistogramDataPoint(
                attributes=attributes,
                start_time_unix_nano=start,
                time_unix_nano=now,
                count=sum(counts),
                sum=total,
                bucket_counts=counts,
                explicit_bounds=self.boundaries,
                min=low,
                max=high,
                exemplars=[
                    Exemplar(None, value, at, span_id=span_id, trace_id=trace_id)
                    for value, at, span_id, trace_id in (e for e in taken if e is not None)
                    if at > exemplars_since
                ],
            )
            for attributes, start, counts, total, low, high, taken in snapshot
        ]
        return Metric(
            name=self.name,
            description=self.description,
            unit=self.unit,
            data=Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE),
        )

    def reset(self) -> None:
        self._points = {}
        self._lock = threading.Lock()


class HistogramBridge:
    """The fast histograms of one meter provider, merged into what its readers collect."""

    def __init__(self, provider: Any, resource: Any, exemplars: bool) -> None:
        self._provider = weakref.ref(provider)
        self._resource = resource  # the provider's own is read at each merge: see resource()
        self.exemplars = exemplars
        self._scopes: dict[tuple[str, str | None], list[FastHistogram]] = {}
        self._last_collect: dict[int, int] = {}  # id(reader) -> when it last collected
        self._lock = threading.Lock()

    def get_or_add(self, scope: tuple[str, str | None], histogram: FastHistogram) -> FastHistogram:
        """The histogram of that name in that scope: a second create gets the first (as the SDK's does)."""
        with self._lock:
            histograms = self._scopes.setdefault(scope, [])
            for known in histograms:
                if known.name == histogram.name:
                    return known
            histograms.append(histogram)
            return histogram

    def resource(self) -> Any:
        """The provider's resource as it is now: the SDK gives a forked child its own service.instance.id.

        Read from the provider's private ``_sdk_config`` (as :mod:`otel_agensium.fork` reads its
        internals); the resource given at install if an SDK version moved it.
        """
        config = getattr(self._provider(), "_sdk_config", None)
        return getattr(config, "resource", None) or self._resource

    def merge(self, reader: Any, data: MetricsData) -> MetricsData:
        """``data`` with this bridge's points added under their scopes (into the first resource)."""
        now = time_ns()
        since = self._last_collect.get(id(reader), 0)
        self._last_collect[id(reader)] = now
        extra: dict[tuple[str, str | None], list[Metric]] = {}
        for scope, histograms in list(self._scopes.items()):
            metrics = [m for m in (h.collect(now, since) for h in histograms) if m is not None]
            if metrics:
                extra[scope] = metrics
        if not extra:
            return data
        resources = list(data.resource_metrics) if data is not None else []
        if resources:
            first = resources[0]
        else:  # none of the SDK's instruments had a point
            resource = self.resource()
            first = ResourceMetrics(resource, [], resource.schema_url)
        scopes = []
        for scope_metrics in first.scope_metrics:
            key = (scope_metrics.scope.name, scope_metrics.scope.version)
            added = extra.pop(key, None)
            if added:
                scope_metrics = ScopeMetrics(
                    scope_metrics.scope, [*scope_metrics.metrics, *added], scope_metrics.schema_url
                )
            scopes.append(scope_metrics)
        for (name, version), added in extra.items():
            scopes.append(ScopeMetrics(InstrumentationScope(name, version), added, ""))
        merged = ResourceMetrics(first.resource, scopes, first.schema_url)
        return MetricsData([merged, *resources[1:]])

    def reset(self) -> None:
        for histograms in self._scopes.values():
            for histogram in histograms:
                histogram.reset()
        self._last_collect = {}


def install_bridge(provider: Any, resource: Any, readers: Sequence[Any]) -> HistogramBridge | None:
    """Give ``provider`` a bridge when every reader merges its points and the settings allow it."""
    exemplar_filter = _exemplar_filter()
    if exemplar_filter is None or not readers or not all(isinstance(r, BridgedReader) for r in readers):
        return None
    bridge = HistogramBridge(provider, resource, exemplars=exemplar_filter != "always_off")
    for reader in readers:
        reader.histograms = bridge
    _bridges[provider] = bridge
    return bridge


def create_histogram(
    provider: Any,
    meter: Any,
    scope: tuple[str, str | None],
    name: str,
    unit: str,
    description: str,
    boundaries: Sequence[float],
) -> Any:
    """A :class:`FastHistogram` on a provider with a bridge; the SDK's own histogram otherwise."""
    bridge = _bridges.get(provider)
    if bridge is None:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=boundaries
        )
    return bridge.get_or_add(scope, FastHistogram(name, unit, description, boundaries, bridge.exemplars))


class BridgedReader:
    """Mixin for a ``MetricReader``: what it collects gets the bridge's histogram points.

    The SDK calls ``_receive_metrics`` only when its own instruments have points; when
    they have none, ``collect`` hands over the bridge's points alone.
    """

    histograms: HistogramBridge | None = None
    _received = threading.local()

    # MetricReader.collect is marked final; this override only adds to it: the SDK calls
    # _receive_metrics with nothing when none of its own instruments has a point (a web app
    # whose one metric is its request duration), and the bridge's points must still go out.
    def collect(self, timeout_millis: float = 10_000) -> None:
        self._received.done = False
        super().collect(timeout_millis=timeout_millis)  # type: ignore[misc]
        bridge = self.histograms
        if bridge is not None and not self._received.done and getattr(self, "_collect", None) is not None:
            data = bridge.merge(self, MetricsData(resource_metrics=[]))
            if data.resource_metrics:
                super()._receive_metrics(data, timeout_millis=timeout_millis)  # type: ignore[misc]

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        self._received.done = True
        bridge = self.histograms
        if bridge is not None:
            metrics_data = bridge.merge(self, metrics_data)
        super()._receive_metrics(metrics_data, timeout_millis, **kwargs)  # type: ignore[misc]


def _reset_after_fork() -> None:
    for bridge in list(_bridges.values()):
        bridge.reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
