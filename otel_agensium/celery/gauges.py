"""``celery_queue_length`` and ``celery_active_workers`` as observable gauges.

:class:`QueueGauges` registers them on the SDK meter provider, so every reader (OTLP
push, Prometheus pull) exports them. Each callback waits on a :class:`~otel_agensium._probe.Probe`
around :class:`~otel_agensium.celery.queues.CeleryQueues`; a collection that fails or times
out reports nothing: an old depth is never exported as a fresh one.

Where they run: ``otel-agensium monitor -A myapp`` (one per deployment, the role Flower
and celery-exporter play), or :func:`install_queue_gauges` inside a single-replica app.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .._probe import Probe
from ..integration import Integration, IntegrationError
from ..redact import describe
from .backlog import QueueFigures, RedisBacklog, read_figures, worker_concurrency
from .metrics import (
    ACTIVE_WORKERS,
    QUEUE_BACKLOG,
    QUEUE_CONCURRENCY,
    QUEUE_ETA_HELD,
    QUEUE_LENGTH,
    QUEUE_LOAD,
    QUEUE_OLDEST_AGE,
    QUEUE_UNACKED,
    celery_meter,
)
from .queues import CeleryQueues, _close_quietly

_log = logging.getLogger("otel_agensium.queues")


class QueueGauges(Integration):
    """``celery_queue_length{queue}`` and ``celery_active_workers{queue}`` as observable gauges.

    Callbacks wait at most ``timeout`` s (less when the reader's own timeout is shorter),
    never raise, and report nothing for a collection whose check failed.
    """

    name = "queue_gauges"
    exclusive = False  # one per meter provider and broker

    def __init__(self, queues: CeleryQueues, meter_provider: MeterProvider, ttl: float = 1.0) -> None:
        super().__init__()
        self.queues = queues
        self.meter_provider = meter_provider
        self.length_probe = Probe(queues.lengths, ttl, "queue-length")
        self.worker_probe = Probe(queues.workers, ttl, "active-workers")
        self.concurrency_probe = Probe(self._concurrency, ttl, "worker-concurrency")
        self.backlog_probe = Probe(self._backlog, ttl, "queue-backlog")
        self.reader = (
            RedisBacklog(queues.redis_client(), queues.app.conf.broker_transport_options) if queues.is_redis else None
        )
        self.enabled = False
        self._failing: dict[str, bool] = {}

    def setup(self) -> None:
        meter = celery_meter(self.meter_provider)
        meter.create_observable_gauge(
            QUEUE_LENGTH,
            callbacks=[self._observe_lengths],
            unit="{message}",
            description="Messages waiting in the broker per queue.",
        )
        meter.create_observable_gauge(
            ACTIVE_WORKERS,
            callbacks=[self._observe_workers],
            unit="{worker}",
            description="Live workers consuming the queue (answering an active_queues broadcast).",
        )
        # What the length hides (backlog.py): Redis only for unacked, ETA-held and age.
        for name, field, unit, description in (
            (QUEUE_UNACKED, "unacked", "{message}", "Messages delivered to workers and not yet acknowledged."),
            (QUEUE_ETA_HELD, "eta_held", "{message}", "Delivered messages whose ETA/countdown is still ahead."),
            (QUEUE_OLDEST_AGE, "oldest_age", "s", "Age of the oldest message waiting in the broker."),
            (QUEUE_BACKLOG, "backlog", "{message}", "Tasks due and not started: waiting + unacked - ETA-held."),
            (QUEUE_CONCURRENCY, "concurrency", "{process}", "Pool size of the live workers consuming the queue."),
            (QUEUE_LOAD, "load", "", "Backlog per pool slot of the consuming workers (a scaler's target)."),
        ):
            meter.create_observable_gauge(
                name, callbacks=[self._figure_observer(name, field)], unit=unit, description=description
            )
        self.enabled = True
        self.on_uninstall(self._disable)

    def _disable(self) -> None:
        # The SDK cannot remove an instrument; its callbacks just stop reporting.
        self.enabled = False

    def _wait(self, probe: Probe, options: CallbackOptions | None) -> Any:
        timeout = self.queues.timeout + (0 if probe is self.length_probe else self.queues.inspect_timeout)
        if probe is self.backlog_probe:
            timeout += self.queues.timeout  # the broadcasts, then the broker reads
        if options is not None and getattr(options, "timeout_millis", None):
            timeout = min(timeout, options.timeout_millis / 1000)
        return probe.get(timeout).value

    def _report(self, what: str, exc: BaseException | None) -> None:
        failing = exc is not None
        if self._failing.get(what, False) == failing:
            return
        self._failing[what] = failing
        if exc is not None:
            _log.warning(
                "otel-agensium: %s not reported: %s (broker %s)",
                what,
                describe(exc, self.queues.secrets),
                self.queues.broker,
            )
        else:
            _log.info("otel-agensium: %s reported again (broker %s)", what, self.queues.broker)

    def _observe_lengths(self, options: CallbackOptions | None = None) -> list[Observation]:
        if not self.enabled:
            return []
        try:
            self.worker_probe.future()  # start the broadcasts now; they run while the depth is read
            self.concurrency_probe.future()
            lengths = self._wait(self.length_probe, options)
        except BaseException as exc:  # noqa: BLE001 - a callback never raises into the SDK
            self._report(QUEUE_LENGTH, exc)
            return []
        self._report(QUEUE_LENGTH, None)
        return [Observation(count, {"queue": name}) for name, count in lengths.items()]

    def _observe_workers(self, options: CallbackOptions | None = None) -> list[Observation]:
        if not self.enabled:
            return []
        try:
            by_queue = self._wait(self.worker_probe, options)
        except BaseException as exc:  # noqa: BLE001
            self._report(ACTIVE_WORKERS, exc)
            return []
        self._report(ACTIVE_WORKERS, None)
        return [Observation(len(workers), {"queue": name}) for name, workers in by_queue.items()]

    # -- the backlog figures ------------------------------------------------------------
    def _concurrency(self) -> dict[str, int]:
        conn = self.queues._connection()  # noqa: SLF001 - the short-timeout connection of the broadcasts
        try:
            return worker_concurrency(self.queues.app, conn, self.queues.inspect_timeout)
        finally:
            _close_quietly(conn)

    def _backlog(self) -> dict[str, QueueFigures]:
        wait = self.queues.timeout + self.queues.inspect_timeout
        workers, pools = self.worker_probe.future(), self.concurrency_probe.future()  # both broadcasts at once
        by_queue, concurrency = workers.result(wait).value, pools.result(wait).value
        return read_figures(self.queues, self.reader, by_queue, concurrency)

    def _figure_observer(self, name: str, field: str) -> Any:
        def observe(options: CallbackOptions | None = None) -> list[Observation]:
            if not self.enabled:
                return []
            try:
                figures = self._wait(self.backlog_probe, options)
            except BaseException as exc:  # noqa: BLE001 - a callback never raises into the SDK
                self._report(QUEUE_BACKLOG, exc)
                return []
            self._report(QUEUE_BACKLOG, None)
            points = ((queue, getattr(fig, field)) for queue, fig in figures.items())
            return [Observation(value, {"queue": queue}) for queue, value in points if value is not None]

        return observe


def install_queue_gauges(app: Any, handle: Any = None, queues: Iterable[str] | None = None) -> QueueGauges | None:
    """Register the queue gauges for ``app`` on the meter provider of ``configure()``'s handle.

    Returns None when metrics are off, and before ``configure()`` (saying so in one warning line).
    Calling it again for the same app returns the installed gauges; for another app it raises
    :class:`IntegrationError` (one set of queue gauges per process). Run them in one process per
    deployment (``otel-agensium monitor``) or in a single-replica app: every process that runs
    them reports the same broker-wide values.
    """
    from ..bootstrap import current

    handle = handle or current()
    if handle is None:
        _log.warning(
            "otel-agensium: install_queue_gauges() called before otel_agensium.configure(): no queue gauges "
            "(call configure() first)"
        )
        return None
    if handle.meter_provider is None:
        return None
    for integration in handle.integrations:
        if isinstance(integration, QueueGauges):
            if integration.queues.app is not app:
                raise IntegrationError(
                    f"otel-agensium: the queue gauges are already installed for the Celery app "
                    f"{integration.queues.app.main!r} ({integration.queues.broker}); one set per process"
                )
            return integration
    settings = handle.settings
    watched = CeleryQueues(
        app,
        settings.queues if queues is None else queues,
        timeout=settings.health_timeout,
        inspect_timeout=settings.inspect_timeout,
    )
    gauges = QueueGauges(watched, handle.meter_provider, ttl=settings.health_cache_ttl)
    gauges.install()
    handle.integrations.append(gauges)
    return gauges
