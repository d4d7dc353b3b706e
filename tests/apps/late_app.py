"""A Celery app that sets up otel-agensium in each prefork child, from ``worker_process_init``.

That is a common recipe for the plain SDK. Celery's prefork child builds every task's tracer
before it sends ``worker_process_init``, so ``configure()`` here runs after the tracers exist
(tests/test_run_hook.py). Broker from TEST_BROKER_URL; run with plain ``celery worker``.
"""

import os

from celery import Celery, signals

BROKER = os.environ["TEST_BROKER_URL"]

app = Celery("late_app", broker=BROKER, backend=BROKER)
app.conf.update(worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True, result_expires=300)


@signals.worker_process_init.connect(weak=False)
def _set_up_telemetry(**_: object) -> None:
    import otel_agensium

    otel_agensium.configure(service_name="late-worker", metric_export_interval=500, bsp_schedule_delay=100)


@app.task(name="late.ok")
def ok(x: int) -> int:
    return x


@app.task(name="late.fail")
def fail() -> None:
    raise ValueError("late.fail failed on purpose")
