"""JSON log lines and OTLP log records that carry the task and trace they were emitted in.

``install()`` (called by ``configure()`` when ``AGENSIUM_LOGS`` is on) puts up to three
handlers on the root logger:

* JSON lines on stdout (``AGENSIUM_LOG_STDOUT``) and/or a size-rotated file
  (``AGENSIUM_LOG_FILE``), formatted by python-json-logger (timestamp, level, logger,
  message, module, function, line, the context, exception);
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

from .context import CONTEXT_FIELDS, HIDDEN_TASK_ARGS, ContextFilter, bind
from .formatter import JsonFormatter
from .otlp import EXCLUDED_FROM_OTLP, OTLPHandler
from .setup import LogsIntegration, install, installed_handlers, uninstall

__all__ = [
    "CONTEXT_FIELDS",
    "EXCLUDED_FROM_OTLP",
    "HIDDEN_TASK_ARGS",
    "ContextFilter",
    "JsonFormatter",
    "LogsIntegration",
    "OTLPHandler",
    "bind",
    "install",
    "installed_handlers",
    "uninstall",
]
