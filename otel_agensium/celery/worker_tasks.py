"""What one worker holds: ``celery_worker_eta_tasks{worker, queue}``, the tasks it keeps for an ETA or countdown.

A worker that receives a task with an ETA (or countdown) does not run it and does not
acknowledge it: it keeps the request in its main process, on a timer, until the ETA, and
raises its prefetch limit by one so the task does not block others (kombu #337, Celery
#2599). Those tasks are in no queue length; on Redis they sit in kombu's ``unacked`` hash,
and if the ETA is further away than the broker's ``visibility_timeout`` the message is
delivered a second time to another worker. This gauge counts them where they are held:
Celery's own ``celery.worker.state.scheduled_requests`` in the worker's main process, by
the queue each was delivered from. Prefork children report nothing (the main process
holds the requests). Labels are bounded: one node name per process, queues through
:class:`~otel_agensium.celery.utils.BoundedLabels`.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from ..errors import report
from ..integration import Integration, connect
from .metrics import WORKER_ETA_TASKS, celery_meter
from .utils import MAX_LABEL_LENGTH, OTHER, queue_of


def eta_counts() -> Counter[str]:
    """ETA/countdown requests this worker process holds, by queue (Celery's ``scheduled_requests``)."""
    from celery.worker import state

    for _ in range(5):  # the main thread may add to the WeakSet while this thread reads it
        try:
            requests = list(state.scheduled_requests)
            break
        except RuntimeError:
            continue
    else:
        return Counter()
    counts: Counter[str] = Counter()
    for request in requests:
        queue = queue_of(getattr(request, "delivery_info", None))
        counts[queue if len(queue) <= MAX_LABEL_LENGTH and queue.isprintable() else OTHER] += 1
    return counts


class WorkerTaskGauges(Integration):
    """Registers ``celery_worker_eta_tasks`` at ``worker_init`` (the worker's main process)."""

    name = "celery-worker-tasks"

    def __init__(self, meter_provider: Any) -> None:
        super().__init__()
        self.meter_provider = meter_provider
        self.main_pid: int | None = None
        self.worker = "unknown"
        self._queues_seen: set[str] = set()

    def setup(self) -> None:
        from celery import signals

        connect(self, signals.worker_init, self._on_worker_init)
        self.on_uninstall(self._quiet)

    def _quiet(self) -> None:
        self.main_pid = None  # the instrument stays (the SDK cannot remove it); it reports nothing

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        try:
            if self.main_pid is not None:
                return
            hostname = str(getattr(sender, "hostname", "") or "unknown")
            self.worker = hostname if len(hostname) <= MAX_LABEL_LENGTH and hostname.isprintable() else OTHER
            self.main_pid = os.getpid()
            meter = celery_meter(self.meter_provider)
            meter.create_observable_gauge(
                WORKER_ETA_TASKS,
                callbacks=[self._observe],
                unit="{task}",
                description="Tasks this worker holds for an ETA or countdown (received, not yet due).",
            )
        except Exception:  # noqa: BLE001 - the worker starts without this gauge
            report("WorkerTaskGauges._on_worker_init")

    def _observe(self, options: Any = None) -> list[Any]:
        from opentelemetry.metrics import Observation

        if self.main_pid is None or os.getpid() != self.main_pid:
            return []
        counts = eta_counts()
        # A queue that held ETA tasks reports 0 once they are due, instead of its series just ending.
        if len(self._queues_seen) < 200:
            self._queues_seen.update(counts)
        return [
            Observation(counts.get(queue, 0), {"worker": self.worker, "queue": queue})
            for queue in sorted(self._queues_seen | set(counts))
        ]
