"""Putting the handlers on the root logger (and Celery's loggers), and taking them off again."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from ..errors import guarded
from ..integration import Integration
from .context import ContextFilter
from .formatter import JsonFormatter
from .otlp import OTLPHandler


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
            json_handlers.append(
                logging.handlers.RotatingFileHandler(
                    settings.log_file,
                    maxBytes=settings.log_file_max_bytes,
                    backupCount=settings.log_file_backups,
                    encoding="utf-8",
                    delay=True,
                )
            )
        for handler in json_handlers:
            handler.setFormatter(formatter)
        handlers = list(json_handlers)
        provider = None
        if not handlers and not settings.otlp:  # every sink off: nothing to install
            return None
        if settings.otlp:
            from opentelemetry.sdk._logs import LoggerProvider
            from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

            from ..exporters import log_exporter
            from ..providers import batch_options

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
    for signal, receiver in (
        (signals.after_setup_logger, _after_setup_logger),
        (signals.after_setup_task_logger, _after_setup_task_logger),
    ):
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


class LogsIntegration(Integration):
    """:func:`install` / :func:`uninstall` behind the integration protocol; ``provider`` once installed."""

    name = "logs"

    def __init__(self, settings: Any, resource: Any) -> None:
        super().__init__()
        self.settings = settings
        self.resource = resource
        self.provider: Any = None

    def setup(self) -> None:
        self.on_uninstall(uninstall)  # takes back whatever part of install() was done
        self.provider = install(self.settings, self.resource)
