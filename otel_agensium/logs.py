"""JSON log lines and OTLP log records that carry the task and trace they were emitted in.

``install()`` (called by ``configure()`` when ``AGENSIUM_LOGS`` is on) puts up to three
handlers on the root logger:

* JSON lines on stdout (``AGENSIUM_LOG_STDOUT``) and/or a size-rotated file
  (``AGENSIUM_LOG_FILE``), formatted by python-json-logger with the seed's fields;
* an OTLP handler (``AGENSIUM_OTLP``) feeding an SDK ``LoggerProvider`` with a batch
  processor and the per-process OTLP exporter.

Each handler carries :class:`ContextFilter`, which stamps the record once with
``task_id``/``task_name`` (Celery's current task: the task stack Celery pushes before a
task runs and pops after it, so nothing outlives the task), ``trace_id``/``span_id``
(the current span, when valid), ``service`` and anything bound with :func:`bind`.
Unless ``AGENSIUM_RECORD_TASK_ARGS`` is on it also hides the task arguments Celery's own
worker log lines carry (the ``data`` extra of "received"/"succeeded"/"raised", the body
and ``argsrepr``/``kwargsrepr`` dumped for unregistered or invalid messages) before any
of our handlers writes or exports the record.

Celery replaces the root logger's handlers when a worker starts. The
``after_setup_logger`` / ``after_setup_task_logger`` handlers put ours back, and take
Celery's own console handler off the loggers we write to (so a line is printed once, as
JSON); a ``--logfile`` handler of Celery's gets our JSON formatter. ``setup_logging`` is
left alone: connecting it would switch Celery's logging set-up off for everyone.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from opentelemetry import trace
from opentelemetry.context import get_current
from pythonjsonlogger.core import RESERVED_ATTRS, merge_record_extra
from pythonjsonlogger.json import JsonFormatter as _LibJsonFormatter

from .errors import guarded, report

__all__ = ["ContextFilter", "JsonFormatter", "OTLPHandler", "bind", "install", "installed_handlers", "uninstall"]

# Fields the filter adds, in the order the JSON line shows them.
CONTEXT_FIELDS = ("task_id", "task_name", "trace_id", "span_id", "service", "user_id", "agent")
# Context that is the record's trace context in OTLP, not an attribute.
_NOT_OTLP_ATTRIBUTES = frozenset({"trace_id", "span_id", "service"})
# The exporter's own logging must never be exported through itself.
EXCLUDED_FROM_OTLP = ("opentelemetry", "urllib3", "requests")
_STAMPED = "_agensium_stamped"  # python-json-logger skips attributes starting with "_"

_RESERVED = frozenset(RESERVED_ATTRS) | {"taskName", "message", "asctime", *CONTEXT_FIELDS}
_RENAMES = {"exc_info": "exception"}

_NOTHING_BOUND: Mapping[str, Any] = MappingProxyType({})
_bound: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "agensium_log_context", default=_NOTHING_BOUND
)


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add fields (``user_id=``, ``agent=``, anything) to every log line emitted inside the block.

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

            _consumer_dumps = {c.UNKNOWN_TASK_ERROR: (1,), c.INVALID_TASK_ERROR: (1,),
                               c.MESSAGE_DECODE_ERROR: (3, 4), c.UNKNOWN_FORMAT: (0,)}
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
            record.data = _without_args(data)  # type: ignore[attr-defined]
        if record.name == _CONSUMER_LOGGER and isinstance(record.args, tuple) and isinstance(record.msg, str):
            hidden = _message_dumps().get(record.msg)
            if hidden is not None:
                record.args = tuple(HIDDEN_TASK_ARGS if i in hidden else _without_args(arg)
                                    for i, arg in enumerate(record.args))

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


def _utc_timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(_LibJsonFormatter):
    """One JSON object per line: the seed's fields, then the context, then ``extra=`` fields.

    ``timestamp`` (UTC, ``Z``), ``level``, ``logger``, ``message``, ``module``, ``function``,
    ``line``; ``task_id``, ``task_name``, ``trace_id``, ``span_id``, ``service``, ``user_id``,
    ``agent`` when known; ``exception`` is the formatted traceback as one string.
    """

    def __init__(self) -> None:
        super().__init__(reserved_attrs=sorted(_RESERVED), json_ensure_ascii=False)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        log_data["timestamp"] = _utc_timestamp(record)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        log_data["module"] = record.module
        log_data["function"] = record.funcName
        log_data["line"] = record.lineno
        values = record.__dict__
        for key in CONTEXT_FIELDS:
            value = values.get(key)
            if value is not None:
                log_data[key] = value
        merge_record_extra(record, log_data, reserved=self._skip_fields)
        for key, value in message_dict.items():  # a dict message, exc_info, stack_info
            log_data[_RENAMES.get(key, key)] = value


# -- OTLP ---------------------------------------------------------------------------------


def _severity(levelno: int) -> Any:
    from opentelemetry._logs import SeverityNumber

    if levelno <= 0:
        return SeverityNumber.UNSPECIFIED
    if levelno < logging.DEBUG:
        return SeverityNumber.TRACE
    group = min(levelno, 59) // 10  # DEBUG=1 ... CRITICAL=5
    return SeverityNumber(1 + group * 4 + min(levelno % 10, 3))


_SEVERITY_TEXT = {"WARNING": "WARN", "CRITICAL": "FATAL"}
_PRIMITIVES = (str, bool, int, float)


def _attribute_value(value: Any) -> Any:
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    try:
        return json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _not_exporter_logging(record: logging.LogRecord) -> bool:
    name = record.name
    return not any(name == prefix or name.startswith(prefix + ".") for prefix in EXCLUDED_FROM_OTLP)


class OTLPHandler(logging.Handler):
    """Turns a ``logging`` record into an OTel log record on the given ``LoggerProvider``.

    The record's context (so its trace_id/span_id) is the current one; ``task_id``,
    ``task_name``, bound fields and ``extra=`` fields become attributes, next to
    ``code.*`` and ``exception.*``; values that are not strings, numbers or booleans are
    sent as JSON strings (Loki keeps flat structured metadata). The SDK's own
    ``LoggingHandler`` is deprecated in opentelemetry-sdk 1.45 and copies every record
    attribute as it is, the JSON-only ``trace_id``/``span_id``/``service`` included, hence
    this small handler.
    """

    def __init__(self, provider: Any, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.provider = provider
        self._local = threading.local()
        self.addFilter(_not_exporter_logging)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):  # logging from inside the export path
            return
        self._local.busy = True
        try:
            self._emit(record)
        except Exception:  # noqa: BLE001 - a lost log record never fails the app
            report("OTLPHandler.emit")  # the warning it logs once is not exported here: busy
        finally:
            self._local.busy = False

    def _emit(self, record: logging.LogRecord) -> None:
        from opentelemetry._logs import LogRecord

        self.provider.get_logger(record.name).emit(
            LogRecord(
                timestamp=int(record.created * 1e9),
                observed_timestamp=time.time_ns(),
                context=get_current(),
                severity_text=_SEVERITY_TEXT.get(record.levelname, record.levelname),
                severity_number=_severity(record.levelno),
                body=record.getMessage(),
                attributes=self._attributes(record),
            )
        )

    @staticmethod
    def _attributes(record: logging.LogRecord) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        for key, value in record.__dict__.items():
            if (value is None or key in _NOT_OTLP_ATTRIBUTES or key.startswith("_")
                    or (key in _RESERVED and key not in CONTEXT_FIELDS)):
                continue
            attributes[key] = _attribute_value(value)
        attributes["code.file.path"] = record.pathname
        attributes["code.function.name"] = record.funcName
        attributes["code.line.number"] = record.lineno
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, _ = record.exc_info
            attributes["exception.type"] = exc_type.__name__
            if exc is not None:
                attributes["exception.message"] = str(exc)
            attributes["exception.stacktrace"] = logging.Formatter().formatException(record.exc_info)
        return attributes


# -- install / uninstall --------------------------------------------------------------------


@dataclass
class _Installed:
    level: int
    json_handlers: list[logging.Handler]
    handlers: list[logging.Handler]  # json handlers + the OTLP handler
    context_filter: ContextFilter
    formatter: JsonFormatter
    provider: Any = None
    attached: list[tuple[logging.Logger, logging.Handler]] = field(default_factory=list)
    removed: list[tuple[logging.Logger, logging.Handler]] = field(default_factory=list)
    reformatted: list[tuple[logging.Handler, logging.Formatter | None]] = field(default_factory=list)
    root_level: int | None = None
    signals: list[tuple[Any, Any]] = field(default_factory=list)


_state: _Installed | None = None
_lock = threading.RLock()


def _stdout() -> Any:
    """The real stdout: never Celery's LoggingProxy (writing to it would log again)."""
    stream = sys.stdout
    if stream is None or type(stream).__name__ == "LoggingProxy":
        stream = sys.__stdout__
    return stream


def install(settings: Any, resource: Any) -> Any:
    """Set up the JSON and OTLP log handlers; returns the ``LoggerProvider`` (None without OTLP).

    Installs nothing when ``settings.logs`` is false. A second call replaces the first.
    """
    global _state
    with _lock:
        uninstall()
        if not settings.logs:
            return None
        level = logging.getLevelName(settings.log_level)
        service = str(resource.attributes.get("service.name", settings.service_name))
        context_filter = ContextFilter(service, record_task_args=bool(settings.record_task_args))
        formatter = JsonFormatter()
        json_handlers: list[logging.Handler] = []
        if settings.log_stdout:
            json_handlers.append(logging.StreamHandler(_stdout()))
        if settings.log_file:
            directory = os.path.dirname(settings.log_file)
            if directory:
                os.makedirs(directory, exist_ok=True)
            json_handlers.append(logging.handlers.RotatingFileHandler(
                settings.log_file, maxBytes=settings.log_file_max_bytes,
                backupCount=settings.log_file_backups, encoding="utf-8", delay=True,
            ))
        for handler in json_handlers:
            handler.setFormatter(formatter)
        handlers = list(json_handlers)
        provider = None
        if not handlers and not settings.otlp:  # every sink off: nothing to install
            return None
        if settings.otlp:
            from opentelemetry.sdk._logs import LoggerProvider
            from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

            from .providers import batch_options, log_exporter

            provider = LoggerProvider(resource=resource)
            # Bounded queue: when the endpoint is down, records beyond it are dropped.
            provider.add_log_record_processor(
                BatchLogRecordProcessor(log_exporter(settings), **batch_options(settings, "blrp"))
            )
            handlers.append(OTLPHandler(provider))
        for handler in handlers:
            handler.setLevel(level)
            handler.addFilter(context_filter)
        state = _Installed(level, json_handlers, handlers, context_filter, formatter, provider)
        root = logging.getLogger()
        if root.level > level:  # the root logger would drop our level's records before the handlers
            state.root_level = root.level
            root.setLevel(level)
        _state = state
        _adopt(root, attach=True)
        _connect_celery(state)
        return provider


def uninstall() -> None:
    """Remove every handler, filter, formatter, level and signal ``install()`` set."""
    global _state
    with _lock:
        state, _state = _state, None
        if state is None:
            return
        for signal, receiver in state.signals:
            with contextlib.suppress(Exception):
                signal.disconnect(receiver)
        for logger, handler in state.attached:
            logger.removeHandler(handler)
        for logger, handler in state.removed:
            if handler not in logger.handlers:
                logger.addHandler(handler)
        for handler, formatter in state.reformatted:
            handler.setFormatter(formatter)
            handler.removeFilter(state.context_filter)
        root = logging.getLogger()
        if state.root_level is not None and root.level == state.level:
            root.setLevel(state.root_level)
        for handler in state.handlers:
            with contextlib.suppress(Exception):
                handler.close()


def installed_handlers() -> list[logging.Handler]:
    """The handlers ``install()`` created (empty when nothing is installed)."""
    state = _state
    return list(state.handlers) if state is not None else []


# -- Celery ---------------------------------------------------------------------------------


def _connect_celery(state: _Installed) -> None:
    try:
        from celery import signals
    except ImportError:
        return
    for signal, receiver in ((signals.after_setup_logger, _after_setup_logger),
                             (signals.after_setup_task_logger, _after_setup_task_logger)):
        signal.connect(receiver, weak=False)
        state.signals.append((signal, receiver))


@guarded
def _after_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    _adopt(logger or logging.getLogger(), attach=True)
    # billiard's pool logger ("Process ... exited with ...") does not propagate either.
    from celery.utils.log import get_multiprocessing_logger

    pool_logger = get_multiprocessing_logger()
    if pool_logger is not None:
        _adopt(pool_logger, attach=not pool_logger.propagate)


@guarded
def _after_setup_task_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    # Celery's task logger does not propagate by default: it needs our handlers itself.
    if logger is not None:
        _adopt(logger, attach=not logger.propagate)


def _is_celerys(handler: logging.Handler) -> bool:
    """A handler Celery's own logging set-up added (it formats with Celery's ColorFormatter)."""
    try:
        from celery.utils.log import ColorFormatter
    except ImportError:
        return False
    return isinstance(handler.formatter, ColorFormatter)


def _adopt(logger: logging.Logger, attach: bool) -> None:
    """Make ``logger`` write through our handlers once; idempotent."""
    with _lock:
        state = _state
        if state is None:
            return
        has_stdout = any(type(h) is logging.StreamHandler for h in state.json_handlers)
        for handler in list(logger.handlers):
            if handler in state.handlers or not _is_celerys(handler):
                continue
            if isinstance(handler, logging.FileHandler):
                if state.json_handlers:  # celery --logfile: same JSON lines there
                    state.reformatted.append((handler, handler.formatter))
                    handler.setFormatter(state.formatter)
                    handler.addFilter(state.context_filter)
            elif has_stdout:  # Celery's console handler: ours prints the line, once
                logger.removeHandler(handler)
                state.removed.append((logger, handler))
        if attach:
            for handler in state.handlers:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
                    state.attached.append((logger, handler))
