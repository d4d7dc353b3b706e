"""``otel-agensium monitor -A myapp``: the broker-wide gauges, from one small process.

``celery_queue_length{queue}`` and ``celery_active_workers{queue}`` describe the broker,
not a process: if every web replica or every worker exported them, Prometheus would
hold N copies and ``sum`` would be wrong. So they run in one process per deployment,
the role Flower and celery-exporter play. The process calls ``configure()`` (OTLP push
and/or ``AGENSIUM_PROMETHEUS_PORT`` pull, as any other), registers the two observable
gauges, and then just waits: the SDK's readers call the gauges' callbacks on every
collection, so a dead worker disappears at the next export (15 s by default here).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from typing import Any, TextIO

DEFAULT_EXPORT_INTERVAL_MS = 15_000


def load_app(app_path: str | None, broker: str | None) -> Any:
    """The Celery app of ``-A`` (``module``, ``module:app`` or ``module.app``), or a bare one for ``broker``."""
    if app_path:
        from celery.app.utils import find_app

        if os.getcwd() not in sys.path:  # `celery -A` resolves modules from the current directory too
            sys.path.insert(0, os.getcwd())
        app = find_app(app_path)
        if broker:
            app.conf.broker_url = broker
        return app
    from celery import Celery

    return Celery("otel-agensium-monitor", broker=broker, set_as_current=False)


def collect_once(app: Any, queues: list[str] | None, out: TextIO) -> int:
    """Read depths, workers and backlog figures once, print them as JSON; exit 1 when the broker could not be read."""
    from .celery.backlog import collect
    from .celery.queues import CeleryQueues
    from .redact import describe
    from .settings import load

    settings = load()
    watched = CeleryQueues(
        app, queues or settings.queues, timeout=settings.health_timeout, inspect_timeout=settings.inspect_timeout
    )
    report: dict[str, Any] = {"broker": watched.broker}
    status = 0
    try:
        workers = watched.workers()
        report["active_workers"] = {queue: len(names) for queue, names in workers.items()}
        report["workers"] = sorted({name for names in workers.values() for name in names})
        report["queue_length"] = watched.lengths()
        report["backlog"] = collect(watched, workers)
    except Exception as exc:  # noqa: BLE001 - printed, scrubbed, exit 1
        report["error"] = describe(exc, watched.secrets)
        status = 1
    print(json.dumps(report, sort_keys=True), file=out, flush=True)
    return status


def run(
    app_path: str | None = None,
    broker: str | None = None,
    queues: list[str] | None = None,
    once: bool = False,
    out: TextIO = sys.stdout,
    app: Any = None,
) -> int:
    """``app``: the app of ``app_path`` already loaded (the CLI loads it to word an import error)."""
    from .settings import load

    broker = broker or load().broker_url
    if not app_path and not broker:
        print("otel-agensium monitor: give -A/--app or --broker (or AGENSIUM_BROKER_URL)", file=sys.stderr)
        return 2
    app = app if app is not None else load_app(app_path, broker)
    if once:
        return collect_once(app, queues, out)

    from . import configure
    from .celery.gauges import install_queue_gauges

    overrides: dict[str, Any] = {}
    if "OTEL_SERVICE_NAME" not in os.environ:
        overrides["service_name"] = "celery-monitor"
    if "OTEL_METRIC_EXPORT_INTERVAL" not in os.environ:
        overrides["metric_export_interval"] = DEFAULT_EXPORT_INTERVAL_MS
    if "AGENSIUM_TRACES" not in os.environ:
        overrides["traces"] = False  # the monitor has no requests or tasks to trace
    handle = configure(**overrides)
    gauges = install_queue_gauges(app, handle, queues=queues)
    if gauges is None:
        print("otel-agensium monitor: metrics are off (OTEL_SDK_DISABLED or AGENSIUM_METRICS=false)", file=sys.stderr)
        handle.shutdown()
        return 2
    settings = handle.settings
    if not settings.otlp and not settings.prometheus_port:
        print(
            "otel-agensium monitor: warning: AGENSIUM_OTLP=false and no AGENSIUM_PROMETHEUS_PORT: "
            "nothing exports the gauges",
            file=sys.stderr,
        )

    stop = threading.Event()

    def _stop(*_: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    print(
        f"otel-agensium monitor: watching {', '.join(gauges.queues.queues())} and every queue a worker "
        f"consumes on {gauges.queues.broker}; exporting every {settings.metric_export_interval / 1000:g} s"
        + (f", /metrics on {settings.prometheus_host}:{settings.prometheus_port}" if settings.prometheus_port else ""),
        file=out,
        flush=True,
    )
    while not stop.wait(1.0):
        pass
    handle.shutdown()
    return 0
