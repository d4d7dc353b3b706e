"""Tracer and meter providers: resource, sampler, batch processors, readers, the Prometheus pull endpoint.

Their OTLP exporters (one per process) are in :mod:`otel_agensium.exporters`, what a fork
needs beyond the SDK in :mod:`otel_agensium.fork`.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from .exporters import metric_exporter, span_exporter
from .histograms import BridgedReader, install_bridge
from .settings import Settings
from .version import __version__

_log = logging.getLogger("otel_agensium")


def build_resource(settings: Settings) -> Resource:
    """service.name, service.version, deployment.environment.name and service.instance.id.

    ``Resource.create`` adds a random ``service.instance.id`` and reads
    ``OTEL_RESOURCE_ATTRIBUTES``; the SDK renews the instance id in forked children.
    """
    return Resource.create(
        {
            "service.name": settings.service_name,
            "service.version": settings.service_version,
            "deployment.environment.name": settings.environment,
            "telemetry.distro.name": "otel-agensium",
            "telemetry.distro.version": __version__,
        }
    )


def build_sampler(settings: Settings) -> sampling.Sampler:
    ratio = settings.sampler_arg
    return {
        "always_on": lambda: sampling.ALWAYS_ON,
        "always_off": lambda: sampling.ALWAYS_OFF,
        "traceidratio": lambda: sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": lambda: sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": lambda: sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }[settings.sampler]()


def batch_options(settings: Settings, prefix: str) -> dict[str, Any]:
    """Queue size, batch size and delay of a batch processor (``bsp`` or ``blrp`` settings)."""
    queue = getattr(settings, f"{prefix}_max_queue_size")
    return {
        "max_queue_size": queue,
        # The SDK refuses a batch larger than the queue; clamp instead of failing start-up.
        "max_export_batch_size": min(getattr(settings, f"{prefix}_max_export_batch_size"), queue),
        "schedule_delay_millis": getattr(settings, f"{prefix}_schedule_delay"),
    }


def build_tracer_provider(settings: Settings, resource: Resource) -> TracerProvider:
    provider = TracerProvider(resource=resource, sampler=build_sampler(settings))
    if settings.otlp:
        # Bounded queue: when the endpoint is down, spans beyond it are dropped, never buffered.
        provider.add_span_processor(BatchSpanProcessor(span_exporter(settings), **batch_options(settings, "bsp")))
    return provider


class _OTLPReader(BridgedReader, PeriodicExportingMetricReader):  # type: ignore[misc]  # collect: see BridgedReader
    """The periodic OTLP reader, with the in-process duration histograms merged in (histograms.py)."""


def build_meter_provider(settings: Settings, resource: Resource, extra_readers: list[MetricReader]) -> MeterProvider:
    readers = list(extra_readers)
    if settings.otlp:
        readers.append(_OTLPReader(metric_exporter(settings), export_interval_millis=settings.metric_export_interval))
    provider = MeterProvider(resource=resource, metric_readers=readers)
    install_bridge(provider, resource, readers)
    return provider


def prometheus_reader(settings: Settings) -> MetricReader | None:
    """A pull endpoint for single-process apps (a web app, a solo-pool worker)."""
    if not settings.prometheus_port:
        return None
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import REGISTRY, start_http_server

    class _PullReader(BridgedReader, PrometheusMetricReader):  # type: ignore[misc]  # collect: see BridgedReader
        # A pull reader has nothing to flush; collecting here would queue a second
        # copy of every series for the next scrape, which Prometheus rejects.
        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

    try:
        start_http_server(settings.prometheus_port, addr=settings.prometheus_host, registry=REGISTRY)
    except OSError as exc:  # port taken, address not local: the app runs on, without the endpoint
        _log.warning(
            "otel-agensium: AGENSIUM_PROMETHEUS_PORT=%s: cannot listen on %s (%s); pull endpoint off",
            settings.prometheus_port,
            settings.prometheus_host,
            exc.strerror or exc,
        )
        return None
    # Without scope labels the series carry exactly the SPEC's labels (task_name, queue).
    return _PullReader(scope_info_enabled=False)
