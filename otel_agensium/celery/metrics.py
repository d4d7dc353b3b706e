"""The Celery metrics, defined in one place and named as Prometheus shows them.

The instrument names below are the Prometheus names minus the suffixes the exporters
add: a monotonic counter gets ``_total``. Histograms carry unit ``s`` and already end
in ``_seconds``, which the Prometheus exporters do not repeat. Gauges use curly-brace
units (``{message}``), which add no suffix (unit ``1`` would add ``_ratio``).
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider

# The seed's buckets, in seconds; dashboards and alerts depend on them (+Inf is implicit).
# Integers on purpose: the Python Prometheus exporter prints a bound as Python formats
# it, and le="1800" (as the Collector writes it) differs from le="1800.0" in Prometheus.
DURATION_BUCKETS = (5, 10, 30, 60, 120, 300, 600, 1200, 1800)
# Queue wait (publish to start) is usually far shorter than a run; finer low buckets.
QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)

METER_NAME = "otel_agensium.celery"

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


@dataclass
class TaskMetrics:
    received: Counter
    succeeded: Counter
    failed: Counter
    retried: Counter
    revoked: Counter
    rejected: Counter
    exceptions: Counter
    time_limit_hits: Counter
    duration: Histogram
    queue_wait: Histogram
    meter: Meter

    @classmethod
    def create(cls, provider: MeterProvider) -> TaskMetrics:
        from ..version import __version__

        meter = provider.get_meter(METER_NAME, __version__)
        return cls(
            received=meter.create_counter(RECEIVED, description="Tasks a worker accepted from the broker."),
            succeeded=meter.create_counter(SUCCEEDED, description="Tasks that returned."),
            failed=meter.create_counter(FAILED, description="Tasks that raised (retries excluded)."),
            retried=meter.create_counter(RETRIED, description="Tasks that asked to be retried."),
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
            duration=meter.create_histogram(
                DURATION,
                unit="s",
                description="Run time of tasks that succeeded or failed.",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            ),
            queue_wait=meter.create_histogram(
                QUEUE_WAIT,
                unit="s",
                description="Time from publish to the start of the run.",
                explicit_bucket_boundaries_advisory=QUEUE_WAIT_BUCKETS,
            ),
            meter=meter,
        )
