"""One JSON object per log line (python-json-logger), the context fields first."""

from __future__ import annotations

import logging
import time
from typing import Any

from pythonjsonlogger.core import merge_record_extra
from pythonjsonlogger.json import JsonFormatter as _LibJsonFormatter

from .context import CONTEXT_FIELDS, RENAMES, RESERVED


def _utc_timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(_LibJsonFormatter):
    """One JSON object per line: the standard fields, then the context, then bound and ``extra=`` fields.

    ``timestamp`` (UTC, ``Z``), ``level``, ``logger``, ``message``, ``module``, ``function``,
    ``line``; ``task_id``, ``task_name``, ``trace_id``, ``span_id``, ``service`` when known;
    fields bound with :func:`~otel_agensium.logs.bind` or passed as ``extra=``; ``exception``
    is the formatted traceback as one string.
    """

    def __init__(self) -> None:
        super().__init__(reserved_attrs=sorted(RESERVED), json_ensure_ascii=False)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
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
            log_data[RENAMES.get(key, key)] = value
