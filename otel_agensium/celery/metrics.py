"""The Celery metrics, defined in one place and named as Prometheus shows them.

The instrument names below are the Prometheus names minus the suffixes the exporters
add: a monotonic counter gets ``_total``. Histograms carry unit ``s`` and already end
in ``_seconds``, which the Prometheus exporters do not repeat. Gauges use curly-brace
units (``{message}``), which add no suffix (unit ``1`` would add ``_ratio``).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, MeterProvider, Observation

# The task-duration buckets, in seconds; dashboards and alerts depend on them (+Inf is implicit).
# Integers on purpose: the Python Prometheus exporter prints a bound as Python formats
# it (le="1800"). The Collector's prometheus exporter, with OpenMetrics on, writes
# le="1800.0", and Prometheus 3 normalises every le to that float form on ingestion;
# so the dashboards and alerts never name a bound, they only sum by (le).
DURATION_BUCKETS = (5, 10, 30, 60, 120, 300, 600, 1200, 1800)
# Queue wait (publish to start) is usually far shorter than a run; finer low buckets.
QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)

METER_NAME = "otel_agensium.celery"


def celery_meter(provider: MeterProvider) -> Meter:
    """The meter every Celery instrument of this package is created on (its name and version)."""
    from ..version import __version__

    return provider.get_meter(METER_NAME, __version__)


# Prometheus name -> (help text); see TaskMetrics for the instruments.
RECEIVED = "celery_tasks_received"
SUCCEEDED = "celery_tasks_succeeded"
FAILED = "celery_tasks_failed"
RETRIED = "celery_tasks_retried"
REVOKED = "celery_tasks_revoked"
REJECTED = "celery_tasks_rejected"
EXCEPTIONS = "celery_task_exceptions"
TIME_LIMIT_HITS = "celery_task_time_limit_hits"
DURATION = "celery_task_duration_seconds"
QUEUE_WAIT = "celery_task_queue_wait_seconds"
QUEUE_LENGTH = "celery_queue_length"
ACTIVE_WORKERS = "celery_active_workers"
# What the length hides (otel_agensium/celery/backlog.py); label queue.
QUEUE_UNACKED = "celery_queue_unacked"
QUEUE_ETA_HELD = "celery_queue_eta_held"
QUEUE_OLDEST_AGE = "celery_queue_oldest_message_age_seconds"
QUEUE_BACKLOG = "celery_queue_backlog"
QUEUE_CONCURRENCY = "celery_queue_consumer_concurrency"
QUEUE_LOAD = "celery_queue_load"
# Per worker process (see ProcessMetrics); labels process_role (main|child) and worker.
PROCESS_RESIDENT_MEMORY = "celery_worker_process_resident_memory_bytes"
PROCESS_CPU = "celery_worker_process_cpu_seconds"  # a counter: _total in Prometheus
PROCESS_MEMORY_LIMIT = "celery_worker_process_memory_limit_bytes"


class Tally:
    """A monotonic count per attribute set, kept in the process, read by an ``ObservableCounter``.

    The four counters that move on every task (received, succeeded, failed, retried) cost
    a dict update here instead of a trip through the SDK's synchronous measurement path
    (about 5 us each: exemplar filter, attribute copy and hash, aggregation lock); the SDK
    reads the totals once per collection. What Prometheus and the Collector see is the
    same cumulative monotonic sum. A forked child starts from zero, as the SDK's own
    metric state does after :func:`~otel_agensium.fork.reset_metric_state_after_fork`.
    ``add`` has the signature of ``Counter.add``, so the handlers do not care which it is.
    """

    _instances: weakref.WeakSet[Tally] = weakref.WeakSet()

    def __init__(self) -> None:
        self._counts: dict[tuple, list[Any]] = {}  # attribute items -> [count, attributes]
        self._lock = threading.Lock()
        Tally._instances.add(self)

    def add(self, amount: int, attributes: Mapping[str, str]) -> None:
        key = tuple(attributes.items())
        with self._lock:
            entry = self._counts.get(key)
            if entry is None:
                self._counts[key] = [amount, attributes]
            else:
                entry[0] += amount

    def observe(self, options: CallbackOptions | None = None) -> Iterable[Observation]:
        with self._lock:
            return [Observation(count, attributes) for count, attributes in self._counts.values()]

    def reset(self) -> None:
        self._counts = {}
        self._lock = threading.Lock()


def _reset_tallies_after_fork() -> None:
    for tally in list(Tally._instances):
        tally.reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_tallies_after_fork)


def _tally(meter: Meter, name: str, description: str) -> Tally:
    tally = Tally()
    meter.create_observable_counter(name, callbacks=[tally.observe], description=description)
    return tally


@dataclass
class TaskMetrics:
    received: Tally
    succeeded: Tally
    failed: Tally
    retried: Tally
    revoked: Counter
    rejected: Counter
    exceptions: Counter
    time_limit_hits: Counter
    duration: Histogram  # or a histograms.FastHistogram: the same record()
    queue_wait: Histogram
    meter: Meter

    @classmethod
    def create(cls, provider: MeterProvider) -> TaskMetrics:
        from ..histograms import create_histogram
        from ..version import __version__

        meter = celery_meter(provider)
        scope = (METER_NAME, __version__)
        return cls(
            received=_tally(meter, RECEIVED, "Tasks a worker accepted from the broker."),
            succeeded=_tally(meter, SUCCEEDED, "Tasks that returned."),
            failed=_tally(meter, FAILED, "Tasks that raised (retries excluded)."),
            retried=_tally(meter, RETRIED, "Tasks that asked to be retried."),
            revoked=meter.create_counter(REVOKED, description="Tasks revoked before they finished."),
            rejected=meter.create_counter(
                REJECTED, description="Deliveries the worker rejected: unregistered task names, Reject()."
            ),
            exceptions=meter.create_counter(
                EXCEPTIONS, description="Task failures by exception type (task_name, exception; bounded)."
            ),
            time_limit_hits=meter.create_counter(
                TIME_LIMIT_HITS, description="Soft and hard time limits hit (task_name, queue, limit)."
            ),
            duration=create_histogram(
                provider, meter, scope, DURATION, "s", "Run time of tasks that succeeded or failed.", DURATION_BUCKETS
            ),
            queue_wait=create_histogram(
                provider,
                meter,
                scope,
                QUEUE_WAIT,
                "s",
                "Time from publish to the start of the run.",
                QUEUE_WAIT_BUCKETS,
            ),
            meter=meter,
        )

    def record_queue_wait(self, sent_at: Any, attributes: Mapping[str, str]) -> None:
        """Publish to start, from the publish time an otel-agensium publisher put in the headers."""
        if isinstance(sent_at, (int, float)) and not isinstance(sent_at, bool):
            self.queue_wait.record(max(0.0, time.time() - sent_at), attributes)

    def count_outcome(self, state: str | None, attributes: Mapping[str, str], seconds: float | None) -> None:
        """A run's end, by the state Celery reports; the duration of successes and failures (``seconds``)."""
        if state == "SUCCESS":
            self.succeeded.add(1, attributes)
        elif state == "FAILURE":
            self.failed.add(1, attributes)
        elif state == "RETRY":
            self.retried.add(1, attributes)
            return
        else:
            return
        if seconds is not None:
            self.duration.record(seconds, attributes)


# --- worker processes: resident memory and CPU time -------------------------------------


def resident_memory_bytes(status_path: str = "/proc/self/status") -> int | None:
    """This process's resident set size (``VmRSS``), or None where /proc is not available."""
    try:
        with open(status_path, "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds() -> float:
    """User + system CPU time of this process (not of its children)."""
    times = os.times()
    return times.user + times.system


class ProcessMetrics:
    """Resident memory and CPU time of each worker process, as observable instruments.

    * ``celery_worker_process_resident_memory_bytes`` (gauge, ``VmRSS``),
    * ``celery_worker_process_cpu_seconds_total`` (counter, user + system),
    * ``celery_worker_process_memory_limit_bytes`` (gauge, children only, when
      ``worker_max_memory_per_child`` / ``--max-memory-per-child`` is set),

    labelled ``process_role`` (``main`` for the process that consumes from the broker,
    ``child`` for a prefork pool process) and ``worker`` (the Celery node name). Registered
    once, in the worker's main process; the callbacks read the process they run in, so a
    forked child (which has its own ``service.instance.id`` and metric state) reports
    itself: one series per process, told apart by the ``instance`` label. Labels stay
    bounded: two roles, one node name per process.

    A process that is shutting down stops reporting (:meth:`stop`) before its final
    flush: a recycled child's series ends with its last periodic export instead of with
    a point taken while it exits.
    """

    def __init__(self, meter: Meter, worker: str, memory_limit_kib: int | None = None) -> None:
        self.meter = meter
        self.worker = worker
        self.memory_limit = int(memory_limit_kib) * 1024 if memory_limit_kib else None
        self.main_pid = os.getpid()
        self._stopped_pid: int | None = None
        self._attrs: tuple[int, dict[str, str]] | None = None

    def install(self) -> None:
        self.meter.create_observable_gauge(
            PROCESS_RESIDENT_MEMORY,
            callbacks=[self._observe_memory],
            unit="By",
            description="Resident memory (VmRSS) of the worker process.",
        )
        self.meter.create_observable_counter(
            PROCESS_CPU,
            callbacks=[self._observe_cpu],
            unit="s",
            description="User and system CPU time of the worker process.",
        )
        if self.memory_limit:
            self.meter.create_observable_gauge(
                PROCESS_MEMORY_LIMIT,
                callbacks=[self._observe_limit],
                unit="By",
                description="worker_max_memory_per_child of the pool process (a child above it is replaced).",
            )

    def stop(self) -> None:
        """This process reports no more points (it is exiting)."""
        self._stopped_pid = os.getpid()

    def attributes(self) -> dict[str, str] | None:
        pid = os.getpid()
        if self._stopped_pid == pid:
            return None
        if self._attrs is None or self._attrs[0] != pid:
            role = "main" if pid == self.main_pid else "child"
            self._attrs = (pid, {"process_role": role, "worker": self.worker})
        return self._attrs[1]

    def _observe_memory(self, options: CallbackOptions | None = None) -> Iterable[Observation]:
        attrs = self.attributes()
        value = resident_memory_bytes() if attrs is not None else None
        return [Observation(value, attrs)] if value is not None else []

    def _observe_cpu(self, options: CallbackOptions | None = None) -> Iterable[Observation]:
        attrs = self.attributes()
        return [Observation(cpu_seconds(), attrs)] if attrs is not None else []

    def _observe_limit(self, options: CallbackOptions | None = None) -> Iterable[Observation]:
        attrs = self.attributes()
        if attrs is None or attrs["process_role"] != "child" or self.memory_limit is None:
            return []
        return [Observation(self.memory_limit, attrs)]


# --- celery beat (otel_agensium/celery/beat.py); labels entry, task_name ------------------
BEAT_SENDS = "celery_beat_sends"  # a counter: _total in Prometheus
BEAT_SEND_ERRORS = "celery_beat_send_errors"  # a counter: _total in Prometheus
BEAT_LAST_SENT = "celery_beat_entry_last_sent_timestamp_seconds"
BEAT_DUE = "celery_beat_entry_due_timestamp_seconds"
BEAT_LAG = "celery_beat_entry_lag_seconds"
BEAT_NEXT_DUE = "celery_beat_entry_next_due_timestamp_seconds"
BEAT_NEXT_TICK = "celery_beat_next_tick_timestamp_seconds"  # no labels: beat's liveness

# --- worker probes (otel_agensium/celery/probe.py); label worker ----------------------------
WORKER_READY = "celery_worker_ready"
# --- what a worker holds (otel_agensium/celery/worker_tasks.py); labels worker, queue -------
WORKER_ETA_TASKS = "celery_worker_eta_tasks"
