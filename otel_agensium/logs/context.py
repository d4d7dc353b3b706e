"""Task, trace and bound context stamped on every log record; Celery's task arguments hidden."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS

from ..errors import guarded

# Fields the filter adds, in the order the JSON line shows them; fields bound with bind() follow.
CONTEXT_FIELDS = ("task_id", "task_name", "trace_id", "span_id", "service")
# Context that is the record's trace context in OTLP, not an attribute.
NOT_OTLP_ATTRIBUTES = frozenset({"trace_id", "span_id", "service"})
_STAMPED = "_agensium_stamped"  # python-json-logger skips attributes starting with "_"

RESERVED = frozenset(RESERVED_ATTRS) | {"taskName", "message", "asctime", *CONTEXT_FIELDS}
RENAMES = {"exc_info": "exception"}

_NOTHING_BOUND: Mapping[str, Any] = MappingProxyType({})
_bound: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "agensium_log_context", default=_NOTHING_BOUND
)


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add fields (``bind(user_id=42)``, any names the app uses) to every log line emitted inside the block.

    Nested blocks add to the outer ones; leaving a block restores what was there before.
    """
    token = _bound.set(MappingProxyType({**_bound.get(), **fields}))
    try:
        yield
    finally:
        _bound.reset(token)


HIDDEN_TASK_ARGS = "<hidden: AGENSIUM_RECORD_TASK_ARGS is off>"
_ARG_KEYS = frozenset({"args", "kwargs", "argsrepr", "kwargsrepr"})
_CONSUMER_LOGGER = "celery.worker.consumer.consumer"
_consumer_dumps: dict[str, tuple[int, ...]] | None = None


def _message_dumps() -> dict[str, tuple[int, ...]]:
    """Celery's consumer messages that dump a task message, and which of their args hold its body."""
    global _consumer_dumps
    if _consumer_dumps is None:
        try:
            from celery.worker.consumer import consumer as c

            _consumer_dumps = {
                c.UNKNOWN_TASK_ERROR: (1,),
                c.INVALID_TASK_ERROR: (1,),
                c.MESSAGE_DECODE_ERROR: (3, 4),
                c.UNKNOWN_FORMAT: (0,),
            }
        except (ImportError, AttributeError):
            _consumer_dumps = {}
    return _consumer_dumps


def _without_args(value: Any) -> Any:
    if isinstance(value, Mapping) and not _ARG_KEYS.isdisjoint(value):
        return {k: (HIDDEN_TASK_ARGS if k in _ARG_KEYS else v) for k, v in value.items()}
    return value


def _load_current_task() -> Any:
    try:
        from celery._state import get_current_task
    except ImportError:  # a process without Celery: no task context, only trace context
        return None
    return get_current_task


class ContextFilter(logging.Filter):
    """Stamps task, trace and bound context on a record; never drops a record, never raises."""

    def __init__(self, service: str, record_task_args: bool = False) -> None:
        super().__init__()
        self.service = service
        self.record_task_args = record_task_args
        self._current_task = _load_current_task()

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, _STAMPED, False):
            self._stamp(record)
            if not self.record_task_args and record.name.startswith("celery."):
                self._hide_task_args(record)
        return True

    @guarded
    def _hide_task_args(self, record: logging.LogRecord) -> None:
        data = record.__dict__.get("data")
        if isinstance(data, Mapping):  # a copy: record.args may be the same dict, used for the message
            record.data = _without_args(data)
        if record.name == _CONSUMER_LOGGER and isinstance(record.args, tuple) and isinstance(record.msg, str):
            hidden = _message_dumps().get(record.msg)
            if hidden is not None:
                record.args = tuple(
                    HIDDEN_TASK_ARGS if i in hidden else _without_args(arg) for i, arg in enumerate(record.args)
                )

    @guarded
    def _stamp(self, record: logging.LogRecord) -> None:
        setattr(record, _STAMPED, True)
        values = record.__dict__
        if self._current_task is not None:
            task = self._current_task()
            if task is not None:
                task_id = getattr(task.request, "id", None)
                if task_id is not None:
                    values.setdefault("task_id", task_id)
                    values.setdefault("task_name", task.name)
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            values.setdefault("trace_id", format(span_context.trace_id, "032x"))
            values.setdefault("span_id", format(span_context.span_id, "016x"))
        values.setdefault("service", self.service)
        for key, value in _bound.get().items():
            values.setdefault(key, value)
