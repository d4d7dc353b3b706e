"""The OTLP exporters: one per signal, created once per process, their failures counted and said once a minute.

Prefork pools (Celery's default) fork children from a parent that already holds the
SDK's providers. An exporter inherited from the parent would share its HTTP connection
pool (its sockets) with it, so every exporter here is a :class:`_PerProcessExporter`: the
real one is created in each process id: at once in the process that configures, lazily in
a forked child. Each export runs in a thread of its own, bounded by the final flush's
deadline (:mod:`otel_agensium.shutdown`).

Nothing on the export path may be imported for the first time in an export thread. A fork
copies the import lock of a module another thread is importing at that moment, held, and
nothing in the child will release it: the child's first export that imports the same
module blocks forever, and all its telemetry is lost without a word (a prefork parent
forks its children just as its first exports run). So the real exporter, with its
encoders, is created when the process configures, on its thread, and what ``requests``
imports on its first request is imported here (tests/test_fork_imports.py).
"""

from __future__ import annotations

import logging
import netrc  # noqa: F401 - requests imports it on its first request (get_netrc_auth): see above
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from . import errors
from .fork import renew_locks
from .settings import Settings
from .shutdown import BUDGET, call_within_budget, count_items

_log = logging.getLogger("otel_agensium")

# One warning per minute at most when an export fails (endpoint down, refused, ...).
_WARN_EVERY_SECONDS = 60.0
# A running export is called stalled after twice its timeout plus this (retries, a slow start).
STALL_MARGIN_SECONDS = 5.0


class _ExportFailures:
    """Counts failed exports and logs at most one warning a minute."""

    def __init__(self) -> None:
        self.failed = 0
        self.dropped = 0  # spans / log records the full batch queues dropped
        self._last_warning = 0.0
        self._lock = threading.Lock()

    def record(self, signal: str, endpoint: str) -> None:
        errors.count_export_failure(signal)
        with self._lock:
            self.failed += 1
            now = time.monotonic()
            if now - self._last_warning < _WARN_EVERY_SECONDS:
                return
            self._last_warning = now
        _log.warning(
            "otel-agensium: %s export to %s failed (%d failed exports, %d queued items dropped so far); "
            "telemetry is dropped until it recovers, the application is not affected",
            signal,
            endpoint,
            self.failed,
            self.dropped,
        )


EXPORT_FAILURES = _ExportFailures()


class _CountDrops(logging.Filter):
    """Counts the batch processors' "Queue full, dropping ..." records instead of printing each.

    So is "Shutdown called, ignoring ..." (a record or span emitted after the final flush).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Queue full"):
            with EXPORT_FAILURES._lock:
                EXPORT_FAILURES.dropped += 1
            return False
        return not message.startswith("Shutdown called")


_COUNT_DROPS = _CountDrops()


def quiet_exporter_logs() -> None:
    """One warning a minute instead of a line per failed attempt, retry and dropped item.

    The OTLP exporters log every failed attempt and retry ("Transient error ...", "Failed
    to export batch ...") and the batch processors every dropped item; with the endpoint
    down that is many lines a second in the app's own log. :class:`_ExportFailures` says
    the same, with counts, at most once a minute. A level the user set is left alone.
    """
    exporters = logging.getLogger("opentelemetry.exporter.otlp")
    if exporters.level == logging.NOTSET:
        exporters.setLevel(logging.CRITICAL)
    processors = logging.getLogger("opentelemetry.sdk._shared_internal")
    if _COUNT_DROPS not in processors.filters:
        processors.addFilter(_COUNT_DROPS)


class _PerProcessExporter:
    """Creates the wrapped exporter lazily, once per process id."""

    _instances: weakref.WeakSet[_PerProcessExporter] = weakref.WeakSet()

    def __init__(self, factory: Callable[[], Any], signal: str, endpoint: str, timeout: float = 10.0) -> None:
        self._factory = factory
        self._signal = signal
        self._endpoint = endpoint
        # An export still running this long after it began is past its own timeout and retries.
        self._stall_after = 2 * timeout + STALL_MARGIN_SECONDS
        self._inner: Any = factory()  # on the configuring thread: imports what its exports need
        self._pid = os.getpid()
        self._closed = False
        self._lock = threading.Lock()
        _PerProcessExporter._instances.add(self)

    def _get(self) -> Any:
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    self._inner = self._factory()
                    self._pid = pid
                    self._closed = False
        return self._inner

    _SUCCESS: Any = None  # the export result enum members of the signal
    _FAILURE: Any = None

    def export(self, *args: Any, **kwargs: Any) -> Any:
        """Export from a thread of its own, bounded by the final flush's deadline once it began.

        What was not sent during the final flush is counted for its one report line.
        """
        batch = args[0] if args else next(iter(kwargs.values()), ())
        outcome = call_within_budget(
            lambda: self._get().export(*args, **kwargs),
            f"otel-agensium-{self._signal}-export",
            give_up=self.shutdown,
            stall_after=self._stall_after,
            stalled=self._stalled,
        )
        result = outcome[0] if outcome else self._FAILURE
        if result is not self._SUCCESS:
            if BUDGET.deadline is None:
                EXPORT_FAILURES.record(self._signal, self._endpoint)
            else:
                BUDGET.drop(self._signal, count_items(batch))
        return result

    def _stalled(self, seconds: float) -> None:
        _log.warning(
            "otel-agensium: a %s export to %s has not returned after %.0f s, past its timeout (an endpoint "
            "that keeps the connection open and trickles bytes, or a stuck process); this process's %ss "
            "wait behind it and are dropped once their queue is full, the application is not affected",
            self._signal,
            self._endpoint,
            seconds,
            self._signal,
        )

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        if self._inner is not None and self._pid == os.getpid() and not self._closed:
            self._closed = True
            try:
                self._inner.shutdown()
            except Exception:  # noqa: BLE001
                _log.debug("otel-agensium: exporter shutdown failed", exc_info=True)

    def force_flush(self, *args: Any, **kwargs: Any) -> bool:
        return True  # the batch processors and readers flush; the exporter holds nothing


class PerProcessSpanExporter(_PerProcessExporter, SpanExporter):
    _SUCCESS, _FAILURE = SpanExportResult.SUCCESS, SpanExportResult.FAILURE


class PerProcessMetricExporter(_PerProcessExporter, MetricExporter):
    def __init__(self, factory: Callable[[], Any], signal: str, endpoint: str, timeout: float = 10.0) -> None:
        _PerProcessExporter.__init__(self, factory, signal, endpoint, timeout)
        MetricExporter.__init__(  # temporality/aggregation preferences come from the real exporter
            self,
            preferred_temporality=self._inner._preferred_temporality,
            preferred_aggregation=self._inner._preferred_aggregation,
        )

    _SUCCESS, _FAILURE = MetricExportResult.SUCCESS, MetricExportResult.FAILURE


class PerProcessLogExporter(_PerProcessExporter, LogRecordExporter):
    """A LogRecordExporter created once per process id, like the span and metric exporters."""

    _SUCCESS, _FAILURE = LogRecordExportResult.SUCCESS, LogRecordExportResult.FAILURE


def http_exporter_options(settings: Settings) -> dict[str, Any]:
    """Headers, timeout and compression for an OTLP/HTTP exporter, from validated settings.

    Passed explicitly so that the SDK never parses (and never logs a traceback for) these
    variables itself; a bad value was already reported in one line and replaced by its default.
    """
    from opentelemetry.exporter.otlp.proto.http import Compression

    compression = {"gzip": Compression.Gzip, "deflate": Compression.Deflate}.get(
        settings.compression, Compression.NoCompression
    )
    return {"headers": settings.headers, "timeout": settings.export_timeout, "compression": compression}


def _exporter(
    settings: Settings,
    wrapper: type[_PerProcessExporter],
    signal: str,
    path: str,
    http_class: Callable[[], type],
    grpc_class: Callable[[], type],
) -> Any:
    """An OTLP exporter for one signal, created once per process by ``wrapper``.

    ``http_class``/``grpc_class`` import the exporter class when it is created: the gRPC package
    is optional.
    """
    timeout = settings.export_timeout
    if settings.protocol == "grpc":
        return wrapper(
            lambda: grpc_class()(endpoint=settings.endpoint, headers=settings.headers),
            signal,
            settings.endpoint,
            timeout,
        )
    url = f"{settings.endpoint}/v1/{path}"
    options = http_exporter_options(settings)
    return wrapper(lambda: http_class()(endpoint=url, **options), signal, url, timeout)


def span_exporter(settings: Settings) -> SpanExporter:
    def http() -> type:
        if not settings.fast_encoder:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter
        # The official exporter with a direct protobuf writer: same request bytes, far less CPU.
        from .fastencode import FastOTLPSpanExporter

        return FastOTLPSpanExporter

    def grpc() -> type:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter

    return _exporter(settings, PerProcessSpanExporter, "span", "traces", http, grpc)


def metric_exporter(settings: Settings) -> MetricExporter:
    def http() -> type:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter

    def grpc() -> type:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter

    return _exporter(settings, PerProcessMetricExporter, "metric", "metrics", http, grpc)


def log_exporter(settings: Settings) -> LogRecordExporter:
    def http() -> type:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        return OTLPLogExporter

    def grpc() -> type:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return OTLPLogExporter

    return _exporter(settings, PerProcessLogExporter, "log", "logs", http, grpc)


def _renew_own_locks_after_fork() -> None:
    """Export threads take these locks; a fork while one is held must not leave it held in the child."""
    renew_locks(EXPORT_FAILURES, "_lock")
    for exporter in list(_PerProcessExporter._instances):
        renew_locks(exporter, "_lock")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_own_locks_after_fork)
