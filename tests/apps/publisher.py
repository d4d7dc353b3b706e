"""A publisher process: ``python -m tests.apps.publisher QUEUE``; the Celery tracing mode comes from
AGENSIUM_CELERY_INSTRUMENTATION. Publishes t.incr, t.fail and t.retry under a "client" span, waits for
their results, flushes, and prints their task ids and the client span's trace id as one JSON line."""

import json
import sys

import otel_agensium

handle = otel_agensium.configure(metrics=False, logs=False)

from opentelemetry import trace  # noqa: E402

from tests.apps import tasks_app  # noqa: E402

queue = sys.argv[1]
with trace.get_tracer("tests.publisher").start_as_current_span("client") as client:
    incr = tasks_app.incr.apply_async(queue=queue)
    fail = tasks_app.fail.apply_async(queue=queue)
    retry = tasks_app.retry.apply_async(queue=queue)
incr.get(timeout=60)
fail.get(timeout=60, propagate=False)
retry.get(timeout=60)
handle.shutdown()
print(
    json.dumps(
        {
            "incr": incr.id,
            "fail": fail.id,
            "retry": retry.id,
            "trace_id": format(client.get_span_context().trace_id, "032x"),
        }
    )
)
