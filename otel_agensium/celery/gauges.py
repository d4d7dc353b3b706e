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
from ..integration import Integration
from ..redact import describe
from .metrics import ACTIVE_WORKERS, METER_NAME, QUEUE_LENGTH
from .queues import CeleryQueues

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
        self.enabled = False
        self._failing: dict[str, bool] = {}

    def setup(self) -> None:
        from ..version import __version__

        meter = self.meter_provider.get_meter(METER_NAME, __version__)
        meter.create_observable_gauge(
            QUEUE_LENGTH, callbacks=[self._observe_lengths], unit="{message}",
            description="Messages waiting in the broker per queue.",
        )
        meter.create_observable_gauge(
            ACTIVE_WORKERS, callbacks=[self._observe_workers], unit="{worker}",
            description="Live workers consuming the queue (answering an active_queues broadcast).",
        )
        self.enabled = True
        self.on_uninstall(self._disable)

    def _disable(self) -> None:
        # The SDK cannot remove an instrument; its callbacks just stop reporting.
        self.enabled = False

    def _wait(self, probe: Probe, options: CallbackOptions | None) -> Any:
        timeout = self.queues.timeout + (self.queues.inspect_timeout if probe is self.worker_probe else 0)
        if options is not None and getattr(options, "timeout_millis", None):
            timeout = min(timeout, options.timeout_millis / 1000)
        return probe.get(timeout).value

    def _report(self, what: str, exc: BaseException | None) -> None:
        failing = exc is not None
        if self._failing.get(what, False) == failing:
            return
        self._failing[what] = failing
        if exc is not None:
            _log.warning("otel-agensium: %s not reported: %s (broker %s)", what,
                         describe(exc, self.queues.secrets), self.queues.broker)
        else:
            _log.info("otel-agensium: %s reported again (broker %s)", what, self.queues.broker)

    def _observe_lengths(self, options: CallbackOptions | None = None) -> list[Observation]:
        if not self.enabled:
            return []
        try:
            self.worker_probe.future()  # start the broadcast now; it runs while the depth is read
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


def install_queue_gauges(app: Any, handle: Any = None, queues: Iterable[str] | None = None) -> QueueGauges | None:
    """Register the queue gauges for ``app`` on the meter provider of ``configure()``'s handle.

    Returns None when metrics are off. Calling it again returns the installed gauges.
    Run them in one process per deployment (``otel-agensium monitor``) or in a
    single-replica app: every process that runs them reports the same broker-wide values.
    """
    from ..bootstrap import current

    handle = handle or current()
    if handle is None or handle.meter_provider is None:
        return None
    for integration in handle.integrations:
        if isinstance(integration, QueueGauges):
            return integration
    settings = handle.settings
    watched = CeleryQueues(app, settings.queues if queues is None else queues, timeout=settings.health_timeout,
                           inspect_timeout=settings.inspect_timeout)
    gauges = QueueGauges(watched, handle.meter_provider, ttl=settings.health_cache_ttl)
    gauges.install()
    handle.integrations.append(gauges)
    return gauges
