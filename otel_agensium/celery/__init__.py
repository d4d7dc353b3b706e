"""Celery integration: the task metrics, around each run and from Celery's signals.

Where each metric moves:

* ``celery_tasks_received_total``: ``task_received``, in the worker's main process,
  when it accepts a delivery from the broker;
* ``celery_tasks_succeeded_total`` / ``_failed_total`` / ``_retried_total`` and
  ``celery_task_duration_seconds``: at the end of the run, by the state Celery's tracer
  returns, in the process that ran the task (a prefork child): :meth:`CeleryIntegration.run`,
  which :mod:`.run_hook` wraps around Celery's own tracer (one call per task instead of
  dispatching ``task_prerun`` and ``task_postrun``); with the contrib instrumentor
  (``AGENSIUM_CELERY_INSTRUMENTATION=contrib``) at ``task_postrun`` instead;
* ``celery_tasks_revoked_total``: ``task_revoked``;
* ``celery_tasks_rejected_total``: ``task_unknown`` (unregistered names) and ``task_rejected``;
* ``celery_task_exceptions_total`` and ``celery_task_time_limit_hits_total``: ``task_failure``.
  When a prefork child dies mid-task (SIGKILL, hard time limit, out of memory) its run
  never ends; the main process sends ``task_failure`` with
  ``WorkerLostError``/``TimeLimitExceeded`` and that is where the failure is counted;
* ``celery_task_queue_wait_seconds``: at the start of the run (``task_prerun`` with
  contrib), from the publish time a publisher running otel-agensium put in the message headers;
* ``celery_worker_process_resident_memory_bytes``, ``celery_worker_process_cpu_seconds_total``
  and ``celery_worker_process_memory_limit_bytes``: observable instruments registered at
  ``worker_init`` (worker processes only, ``AGENSIUM_PROCESS_METRICS``), read by each
  process at collection time (:class:`~otel_agensium.celery.metrics.ProcessMetrics`).

Spans come from :mod:`otel_agensium.celery.tracing` (``AGENSIUM_CELERY_INSTRUMENTATION=lean``,
the default: one publish and one run span, attributes set at start; the run span is started
and ended in :meth:`CeleryIntegration.run`, and the duration recorded while it is still
current, so the histogram's exemplar points at the task's trace) or from the contrib
``CeleryInstrumentor`` (``contrib``): then our ``task_postrun`` handler is connected before
the tracer's, for the same reason, and our ``task_prerun`` handler after it, so the span
exists (it adds ``celery.task_id``/``celery.task_name``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
from celery import bootsteps, signals
from celery.exceptions import Retry
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider, NoOpMeterProvider
from opentelemetry.trace import TracerProvider

from ..errors import guarded, report
from ..integration import Integration
from ..shutdown import worker_stopping
from . import run_hook
from .metrics import ProcessMetrics, TaskMetrics
from .tracing import MAX_ARGS_REPR, TASK_ID_ATTRIBUTE, TASK_NAME_ATTRIBUTE, LeanCeleryTracing, mark_failed
from .utils import SENT_AT_HEADER, BoundedLabels, queue_of

_log = logging.getLogger("otel_agensium")


class AnnounceShutdown(bootsteps.StartStopStep):
    """Worker bootstep after the pool: a stopping worker announces its shutdown before the pool's children
    flush, whoever stopped it (SIGTERM and SIGINT send ``worker_shutting_down`` first; a ``celery control
    shutdown`` broadcast and a failed start do not), so the children and the main process share one budget.

    The worker's blueprint closes and stops its steps newest first: this step before the pool.
    """

    label = "otel-agensium shutdown budget"
    requires = ("celery.worker.components:Pool",)

    def close(self, w: Any) -> None:
        worker_stopping()

    stop = terminate = shutdown = close


class CeleryIntegration(Integration):
    """Connects the signal handlers; ``uninstall()`` disconnects exactly what ``install()`` did."""

    name = "celery"

    def __init__(
        self,
        meter_provider: MeterProvider | None,
        tracer_provider: TracerProvider | None,
        max_task_names: int,
        flush: Callable[[], Any],
        record_task_args: bool = False,
        process_metrics: bool = True,
        instrumentation: str = "lean",
        prometheus_port: int = 0,
    ) -> None:
        super().__init__()
        self.prometheus_port = prometheus_port  # AGENSIUM_PROMETHEUS_PORT: said at worker_init if it misses children
        self.metrics = TaskMetrics.create(meter_provider) if meter_provider is not None else None
        self.tracer_provider = tracer_provider
        self.labels = BoundedLabels(max_task_names)
        self.record_task_args = record_task_args
        self._flush = flush
        self._started: dict[str, float] = {}
        self.instrumentation = instrumentation
        self._annotate = False  # contrib's run span gets the task id/name from our prerun
        self.want_process_metrics = process_metrics
        self.process_metrics: ProcessMetrics | None = None
        self._tracing: LeanCeleryTracing | None = None  # the lean run/publish spans (bench/parts.py times them)
        # Called with (task, task_id, request dict, run span) once the run span is current (canvas.py).
        self.on_run_started: Callable[[Any, Any, dict, Any], Any] | None = None

    # -- install / uninstall -------------------------------------------------------
    def setup(self) -> None:
        self.on_uninstall(self._stop_process_metrics)
        self._connect(signals.before_task_publish, self._on_before_publish)
        self._connect(signals.task_received, self._on_received)
        contrib = self.tracer_provider is not None and self.instrumentation == "contrib"
        if contrib:
            self._connect(signals.task_postrun, self._on_postrun)  # before the instrumentor's
        self._connect(signals.task_revoked, self._on_revoked)
        self._connect(signals.task_unknown, self._on_unknown)
        self._connect(signals.task_rejected, self._on_rejected)
        self._connect(signals.task_failure, self._on_failure)
        self._connect(signals.worker_init, self._on_worker_init)
        self._connect(signals.worker_process_shutdown, self._on_process_shutdown)
        self._connect(signals.worker_shutdown, self._on_process_shutdown)
        self._connect(signals.worker_shutting_down, self._on_shutting_down)
        if contrib:
            from opentelemetry.instrumentation.celery import CeleryInstrumentor

            instrumentor = CeleryInstrumentor()
            # Our own duration histogram replaces the instrumentor's flower.* metric.
            instrumentor.instrument(tracer_provider=self.tracer_provider, meter_provider=NoOpMeterProvider())
            self.on_uninstall(instrumentor.uninstrument, "CeleryInstrumentor.uninstrument")
            self._annotate = True
        elif self.tracer_provider is not None:
            tracing = LeanCeleryTracing(self.tracer_provider, record_task_args=self.record_task_args)
            tracing.install()
            self._tracing = tracing
            self.on_uninstall(tracing.uninstall, "LeanCeleryTracing.uninstall")
        if contrib:
            self._connect(signals.task_prerun, self._on_prerun)  # after the tracer's
        else:
            run_hook.install(self.run)
            self.on_uninstall(run_hook.uninstall, "run_hook.uninstall")

    def _stop_process_metrics(self) -> None:
        if self.process_metrics is not None:
            self.process_metrics.stop()  # the SDK cannot remove instruments; their callbacks go quiet

    def _connect(self, signal: Any, handler: Callable[..., Any]) -> None:
        signal.connect(handler, weak=False)
        self.on_uninstall(lambda: signal.disconnect(handler), f"{signal.name}.disconnect")

    # -- around each run (run_hook; lean tracing or no tracing) --------------------------
    def run(self, inner: Callable[..., Any], task: Any, task_id: Any, args: Any, kwargs: Any, request: Any) -> Any:
        """Run span and task metrics around Celery's own tracer ``inner`` (see :mod:`.run_hook`).

        Celery's exceptions pass through untouched; a failure of our own parts is reported
        (:func:`~otel_agensium.errors.report`) and the task runs on without them.
        """
        tracing, metrics = self._tracing, self.metrics
        req = request if isinstance(request, dict) else {}
        span = attrs = None
        if tracing is not None:
            try:
                span = tracing.start_run(task_id, task.name, req, args, kwargs)
                if self.on_run_started is not None:
                    self.on_run_started(task, task_id, req, span)
            except Exception:  # noqa: BLE001 - the task runs, without its run span
                if span is not None:
                    tracing.end_run(task_id)
                    span = None
                report("CeleryIntegration.run.span")
        if metrics is not None:
            try:
                attrs = self.labels.attributes(task.name, queue_of(req.get("delivery_info")))
                metrics.record_queue_wait(req.get(SENT_AT_HEADER), attrs)
            except Exception:  # noqa: BLE001 - the task runs, uncounted
                attrs = None
                report("CeleryIntegration.run.metrics")
        started = time.perf_counter()
        try:
            result = inner(task_id, args, kwargs, request)
        except BaseException as exc:
            try:
                self._raised(task, exc, span, attrs, time.perf_counter() - started)
            finally:
                if span is not None:
                    tracing.end_run(task_id)  # type: ignore[union-attr]
            raise
        try:
            if attrs is not None:
                # While the run span is still current: the duration histogram's exemplar points at it.
                seconds = time.perf_counter() - started
                metrics.count_outcome(run_hook.outcome(result), attrs, seconds)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - counted; the task's outcome stands
            report("CeleryIntegration.run.metrics")
        finally:
            if span is not None:
                tracing.end_run(task_id)  # type: ignore[union-attr]
        return result

    def _raised(self, task: Any, exc: BaseException, span: Any, attrs: Any, seconds: float) -> None:
        """Celery's tracer raised instead of returning the outcome: an eager run that propagates
        (``task_always_eager`` with ``task_eager_propagates``, ``apply(throw=True)``) re-raises the
        task's exception before storing it, and sends no ``task_failure``; so the outcome is
        recorded here, as the worker records it."""
        if not isinstance(exc, Exception):
            return  # SystemExit, KeyboardInterrupt...: the process is going away, not the task failing
        try:
            retry = isinstance(exc, Retry)
            if span is not None and not retry:
                mark_failed(span, task, exc)
            if attrs is not None and self.metrics is not None:
                self.metrics.count_outcome("RETRY" if retry else "FAILURE", attrs, seconds)
                if not retry:
                    self.metrics.exceptions.add(1, self.labels.exception_attributes(task.name, exc))
        except Exception:  # noqa: BLE001 - the task's exception goes on regardless
            report("CeleryIntegration.run.metrics")

    # -- signal handlers -------------------------------------------------------------
    @guarded
    def _on_before_publish(self, headers: dict | None = None, **_: Any) -> None:
        if headers is not None and SENT_AT_HEADER not in headers:
            headers[SENT_AT_HEADER] = time.time()

    @guarded
    def _on_received(self, request: Any = None, **_: Any) -> None:
        if self.metrics is not None and request is not None:
            self.metrics.received.add(1, self.labels.attributes(request.name, queue_of(request.delivery_info)))

    @guarded
    def _on_prerun(
        self, task_id: str | None = None, task: Any = None, args: Any = None, kwargs: Any = None, **_: Any
    ) -> None:
        if task_id is None or task is None:
            return
        self._started[task_id] = time.perf_counter()
        span = trace.get_current_span() if self._annotate else None
        if span is not None and span.is_recording():
            span.set_attribute(TASK_ID_ATTRIBUTE, task_id)
            span.set_attribute(TASK_NAME_ATTRIBUTE, task.name)
            if self.record_task_args:
                span.set_attribute("celery.args", repr(args)[:MAX_ARGS_REPR])
                span.set_attribute("celery.kwargs", repr(kwargs)[:MAX_ARGS_REPR])
        if self.metrics is not None:
            sent_at = getattr(task.request, SENT_AT_HEADER, None)
            if sent_at is not None:
                attrs = self.labels.attributes(task.name, queue_of(task.request.delivery_info))
                self.metrics.record_queue_wait(sent_at, attrs)

    @guarded
    def _on_postrun(self, task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
        started = self._started.pop(task_id, None) if task_id is not None else None
        if self.metrics is None or task is None:
            return
        attrs = self.labels.attributes(task.name, queue_of(task.request.delivery_info))
        self.metrics.count_outcome(state, attrs, time.perf_counter() - started if started is not None else None)

    @guarded
    def _on_revoked(self, request: Any = None, **_: Any) -> None:
        if self.metrics is not None and request is not None:
            self.metrics.revoked.add(1, self.labels.attributes(request.name, queue_of(request.delivery_info)))

    @guarded
    def _on_unknown(self, message: Any = None, name: str | None = None, **_: Any) -> None:
        if self.metrics is not None:
            queue = queue_of(getattr(message, "delivery_info", None))
            attrs = self.labels.attributes(name, queue)
            self.metrics.received.add(1, attrs)
            self.metrics.rejected.add(1, attrs)

    @guarded
    def _on_rejected(self, message: Any = None, **_: Any) -> None:
        if self.metrics is not None and message is not None:
            headers = getattr(message, "headers", None) or {}
            self.metrics.rejected.add(1, self.labels.attributes(headers.get("task"), queue_of(message.delivery_info)))

    @guarded
    def _on_failure(self, sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
        if self.metrics is None or sender is None:
            return
        name = getattr(sender, "name", None)
        attrs = self.labels.attributes(name, queue_of(getattr(sender.request, "delivery_info", None)))
        if isinstance(exception, (WorkerLostError, TimeLimitExceeded)):
            # Sent by the main process for a child that died: no task_postrun counts it.
            self.metrics.failed.add(1, attrs)
        self.metrics.exceptions.add(1, self.labels.exception_attributes(name, exception))
        if isinstance(exception, (SoftTimeLimitExceeded, TimeLimitExceeded)):
            limit = "soft" if isinstance(exception, SoftTimeLimitExceeded) else "hard"
            self.metrics.time_limit_hits.add(1, {**attrs, "limit": limit})

    @guarded
    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        """In the worker's main process, before its blueprint is built and the pool forks: add the
        shutdown step, register the per-process instruments."""
        steps = sender.app.steps["worker"] if sender is not None else None
        if steps is not None and AnnounceShutdown not in steps:
            steps.add(AnnounceShutdown)
            self.on_uninstall(lambda: steps.discard(AnnounceShutdown), "remove the AnnounceShutdown bootstep")
        pool = str(getattr(sender, "pool_cls", "") or "")
        if self.prometheus_port and self.metrics is not None and ("prefork" in pool or "processes" in pool):
            _log.warning(
                "otel-agensium: AGENSIUM_PROMETHEUS_PORT=%d serves this worker's main process only: the task "
                "outcomes and durations its prefork children record are not on it; export them over OTLP "
                "(the Collector's Prometheus endpoint has every process's series), or run --pool solo or threads",
                self.prometheus_port,
            )
        if self.metrics is None or self.process_metrics is not None or not self.want_process_metrics:
            return
        hostname = str(getattr(sender, "hostname", "") or "unknown")
        worker = hostname if len(hostname) <= 200 and hostname.isprintable() else "other"
        self.process_metrics = ProcessMetrics(
            self.metrics.meter, worker, memory_limit_kib=getattr(sender, "max_memory_per_child", None)
        )
        self.process_metrics.install()

    @guarded
    def _on_shutting_down(self, **_: Any) -> None:
        """SIGTERM/SIGINT in the main process: its children's final flushes and its own share one budget."""
        worker_stopping()

    @guarded
    def _on_process_shutdown(self, **_: Any) -> None:
        if self.process_metrics is not None:
            self.process_metrics.stop()  # no point taken while exiting: the series ends with the last export
        self._flush()
