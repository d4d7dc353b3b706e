"""Lean Celery tracing: one PRODUCER span per publish, one CONSUMER span per run.

The default of ``AGENSIUM_CELERY_INSTRUMENTATION`` (``lean``); ``contrib`` selects
``opentelemetry-instrumentation-celery`` instead. Both carry the trace the same way, so a
publisher on one and a worker on the other join one trace:

* publish (``before_task_publish`` .. ``after_task_publish``): a span named
  ``apply_async/{task name}``, current while the message is sent, whose context the
  global propagator (W3C ``traceparent``/``tracestate``, and baggage, by default) writes
  into the message headers. The worker reads them back from the request dict Celery's
  tracer receives (the message headers; ``task.request`` is built from it);
* run (around Celery's tracer, from ``CeleryIntegration.run``: see ``run_hook``): a span
  named ``run/{task name}``, child of the
  publisher's span (of the current span when the message carried none, as for an eager
  task), current while the task runs, so the task's Redis calls and log lines hang under it;
* failure (``task_failure``): the exception recorded as an event and the status set to
  ERROR with the exception text, unless the task lists it in ``Task.throws`` (an expected
  error); a retry (``task_retry``) sets ``celery.retry.reason``.

Attributes, set once when the span starts (cheaper than one call each after it):
``celery.task_id`` and ``celery.task_name`` (what Grafana searches Tempo by), and the
messaging semantic conventions worth their cost: ``messaging.system`` (``celery``),
``messaging.operation.type`` (``send`` / ``process``), ``messaging.operation.name``
(``apply_async`` / ``run``, the names contrib gives its spans), and
``messaging.destination.name`` (the routing key: the queue with Celery's default direct
routing). ``messaging.message.id`` is left out: it would repeat ``celery.task_id``.
``celery.retries`` is added on a re-run, and Celery's workflow ids ``celery.group_id``,
``celery.parent_id``, ``celery.root_id`` when the request has them (see ``canvas``).
Contrib adds about ten more (the message's whole delivery info, serializer, hostname, ...)
in two passes, after the run.

Spans in flight are kept per task id in two dicts (publish, run): a task that retries
publishes its next attempt under its own id while its run span is still open. The
handlers never raise into Celery (:func:`~otel_agensium.errors.guarded`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import signals
from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..errors import guarded
from .utils import queue_of

TASK_ID_ATTRIBUTE = "celery.task_id"
TASK_NAME_ATTRIBUTE = "celery.task_name"
RETRY_REASON_ATTRIBUTE = "celery.retry.reason"
MAX_ARGS_REPR = 1024
PUBLISH_PREFIX = "apply_async/"
RUN_PREFIX = "run/"
_EMPTY = context.Context()


class _DictGetter(Getter[Any]):
    """Reads propagation fields from the request dict Celery's tracer receives (the message headers)."""

    @staticmethod
    def get(carrier: Any, key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)):
            return [str(item) for item in value]
        return [str(value)]

    @staticmethod
    def keys(carrier: Any) -> list[str]:
        return []


_DICT_GETTER = _DictGetter()


# Celery's workflow ids, on every run span that has them (what Tempo searches a workflow by).
WORKFLOW_ATTRIBUTES = (("group", "celery.group_id"), ("parent_id", "celery.parent_id"), ("root_id", "celery.root_id"))


def request_run_attributes(task_id: str, name: str, request: Any) -> dict[str, Any]:
    """The run span's attributes from the request dict Celery's tracer receives (see run_hook)."""
    attrs: dict[str, Any] = {
        TASK_ID_ATTRIBUTE: task_id,
        TASK_NAME_ATTRIBUTE: name,
        "messaging.system": "celery",
        "messaging.operation.type": "process",
        "messaging.operation.name": "run",
        "messaging.destination.name": queue_of(request.get("delivery_info")),
    }
    for key, attribute in WORKFLOW_ATTRIBUTES:
        value = request.get(key)
        if value and isinstance(value, str):
            attrs[attribute] = value
    retries = request.get("retries")
    if retries:
        attrs["celery.retries"] = retries
    return attrs


def publish_attributes(task_id: str, task_name: str, routing_key: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        TASK_ID_ATTRIBUTE: task_id,
        TASK_NAME_ATTRIBUTE: task_name,
        "messaging.system": "celery",
        "messaging.operation.type": "send",
        "messaging.operation.name": "apply_async",
    }
    if routing_key:
        attrs["messaging.destination.name"] = str(routing_key)
    return attrs


def task_id_of(headers: Any, body: Any) -> str | None:
    """The task id of a message: in the headers (protocol 2), else in the body (protocol 1)."""
    if headers:
        return headers.get("id")
    if isinstance(body, dict):
        return body.get("id")
    return None


def _end(open_spans: dict[str, tuple[Any, Any]], task_id: str | None) -> None:
    """End the span opened for ``task_id`` (publish or run) and detach the context it was attached in."""
    entry = open_spans.pop(task_id, None) if task_id is not None else None
    if entry is not None:
        span, token = entry
        span.end()
        context.detach(token)


def mark_failed(span: Any, task: Any, exception: BaseException) -> None:
    """The run span of a task that raised: the exception event and an ERROR status, unless the
    task declared the error expected (``Task.throws``), as the contrib instrumentor does."""
    throws = getattr(task, "throws", ())
    if throws and isinstance(exception, throws):
        return
    span.record_exception(exception)
    span.set_status(Status(StatusCode.ERROR, str(exception)))


class LeanCeleryTracing:
    """Connects the publish and run span handlers; ``uninstall()`` disconnects exactly those."""

    def __init__(self, tracer_provider: Any, record_task_args: bool = False) -> None:
        from ..version import __version__

        self.tracer = tracer_provider.get_tracer("otel_agensium.celery", __version__)
        self.record_task_args = record_task_args
        # task id -> (span, context token)
        self._publishing: dict[str, tuple[Any, Any]] = {}
        self._running: dict[str, tuple[Any, Any]] = {}  # span, context token
        self._connected: list[tuple[Any, Callable[..., Any]]] = []

    def install(self) -> None:
        for signal, handler in (
            (signals.before_task_publish, self._on_before_publish),
            (signals.after_task_publish, self._on_after_publish),
            (signals.task_failure, self._on_failure),
            (signals.task_retry, self._on_retry),
        ):
            signal.connect(handler, weak=False)
            self._connected.append((signal, handler))

    def uninstall(self) -> None:
        for signal, handler in self._connected:
            signal.disconnect(handler)
        self._connected.clear()

    # -- publish ---------------------------------------------------------------------------
    @guarded
    def _on_before_publish(
        self, sender: Any = None, headers: dict | None = None, body: Any = None, routing_key: Any = None, **_: Any
    ) -> None:
        task_id = task_id_of(headers, body)
        if task_id is None:
            return
        name = sender if isinstance(sender, str) else getattr(sender, "name", "unknown")
        span = self.tracer.start_span(
            PUBLISH_PREFIX + name, kind=SpanKind.PRODUCER, attributes=publish_attributes(task_id, name, routing_key)
        )
        ctx = trace.set_span_in_context(span)
        token = context.attach(ctx)
        self._publishing[task_id] = (span, token)
        if headers:
            propagate.inject(headers, context=ctx)

    @guarded
    def _on_after_publish(self, headers: dict | None = None, body: Any = None, **_: Any) -> None:
        _end(self._publishing, task_id_of(headers, body))

    # -- run (called by CeleryIntegration.run, around Celery's tracer: see run_hook) ---------
    def start_run(self, task_id: str, name: str, request: Any, args: Any, kwargs: Any) -> Any:
        """Start the run span, make it current, keep it under ``task_id``; returns the span."""
        extracted = propagate.extract(request, getter=_DICT_GETTER, context=_EMPTY)
        parent = extracted if extracted else None
        attrs = request_run_attributes(task_id, name, request)
        if self.record_task_args:
            attrs["celery.args"] = repr(args)[:MAX_ARGS_REPR]
            attrs["celery.kwargs"] = repr(kwargs)[:MAX_ARGS_REPR]
        span = self.tracer.start_span(RUN_PREFIX + name, context=parent, kind=SpanKind.CONSUMER, attributes=attrs)
        self._running[task_id] = (span, context.attach(trace.set_span_in_context(span, parent)))
        return span

    def end_run(self, task_id: str) -> None:
        _end(self._running, task_id)

    @guarded
    def _on_failure(
        self, sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, **_: Any
    ) -> None:
        entry = self._running.get(task_id) if task_id is not None else None
        if entry is not None and exception is not None:
            mark_failed(entry[0], sender, exception)

    @guarded
    def _on_retry(self, request: Any = None, reason: Any = None, **_: Any) -> None:
        request_id = getattr(request, "id", None)
        entry = self._running.get(request_id) if request_id is not None else None
        if entry is not None and reason:
            entry[0].set_attribute(RETRY_REASON_ATTRIBUTE, str(reason))
