"""``logging`` records as OTel log records, with the context as attributes."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from opentelemetry.context import get_current

from ..errors import report
from .context import CONTEXT_FIELDS, NOT_OTLP_ATTRIBUTES, RESERVED

# The exporter's own logging must never be exported through itself.
EXCLUDED_FROM_OTLP = ("opentelemetry", "urllib3", "requests")


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
            if (
                value is None
                or key in NOT_OTLP_ATTRIBUTES
                or key.startswith("_")
                or (key in RESERVED and key not in CONTEXT_FIELDS)
            ):
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
