"""Where a worker's per-task telemetry time goes, part by part, in one process.

Runs the real code paths of a solo worker's task with otel-agensium configured as
``opentelemetry-instrument`` configures it (OTLP/HTTP to a live sink, every signal on,
100 % sampling), but calls the signal handlers directly so that each part can be timed
alone, with no broker round trip in the way:

  run span        LeanCeleryTracing.start_run + end_run (what CeleryIntegration.run does
                  around Celery's tracer): extract the publisher's context, start the
                  CONSUMER span with its attributes, attach, end, detach
  Redis span      one traced INCR minus one untraced INCR (real redis-server): the
                  redis_traffic filter and the contrib Redis instrumentor's span
  metrics         received + queue wait + succeeded + duration (task_received's handler and
                  CeleryIntegration.run with tracing off, around a tracer that does
                  nothing; minus calling that tracer alone)
  export          force_flush of the spans of a round: fast encoding + OTLP/HTTP POST to
                  the sink, per task (2 spans); this is the export thread's work
  encoding        of which encoding alone (fastencode), per task
  log line        one ``logger.info`` inside a task: JSON line + OTLP record (a no-op task
                  logs nothing; a task that logs pays this per line)

Every part is timed in CPU time of this process (``time.process_time``: being descheduled
by other load does not count), in rounds of ``--tasks`` tasks, parts alternated round by
round; the minimum over ``--rounds`` rounds is kept (the least disturbed).

    python -m bench.parts [--rounds 30] [--tasks 200]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import time
import uuid


def _setup(broker: str, endpoint: str):
    os.environ.update(
        {
            "BENCH_BROKER_URL": broker,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_SERVICE_NAME": "bench-parts",
            "OTEL_BSP_SCHEDULE_DELAY": "3600000",
            "OTEL_BLRP_SCHEDULE_DELAY": "3600000",
            "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
            "AGENSIUM_PROCESS_METRICS": "false",
        }
    )
    import otel_agensium
    from otel_agensium.logs import installed_handlers

    handle = otel_agensium.configure()
    for handler in installed_handlers():  # JSON lines to a buffer, not the terminal
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setStream(io.StringIO())
    return handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--broker", help="a running Redis (default: start one)")
    parser.add_argument("--endpoint", help="a running OTLP/HTTP sink (default: start one)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()
    from bench.common import machine, otlp_sink, redis_server

    with contextlib.ExitStack() as stack:
        broker = args.broker or stack.enter_context(redis_server())
        endpoint = args.endpoint or stack.enter_context(otlp_sink())
        result = run_parts(broker, endpoint, args.rounds, args.tasks)
    if args.json:
        print(json.dumps(result))
        return
    print(f"Per-task telemetry parts, minimum of {args.rounds} rounds of {args.tasks} tasks; {machine()}")
    for name, us in result.items():
        print(f"{name:32} {us:7.1f} us")


def run_parts(broker: str, endpoint: str, rounds: int, tasks: int) -> dict[str, float]:
    """Microseconds per task of each part (minimum over rounds)."""
    import redis
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from otel_agensium import fastencode

    handle = _setup(broker, endpoint)
    from bench.app import app, incr

    app.conf.broker_url = broker
    celery_integration = next(i for i in handle.integrations if type(i).__name__ == "CeleryIntegration")
    tracing = celery_integration._tracing
    client = redis.Redis.from_url(broker)
    client.ping()
    log = logging.getLogger("bench.task")
    exporter = handle.tracer_provider._active_span_processor._span_processors[0]._batch_processor._exporter
    # The metric handlers alone: an integration without a tracer (its instruments are the same ones).
    from otel_agensium.celery import CeleryIntegration

    metrics_only = CeleryIntegration(handle.meter_provider, None, 500, flush=lambda: None, process_metrics=False)
    delivery = {"routing_key": "bench", "exchange": ""}

    class Request:  # what celery.worker.request.Request offers the task_received handler
        name = incr.name
        delivery_info = delivery

    def headers() -> dict:
        parent = SpanContext(uuid.uuid4().int >> 1, uuid.uuid4().int >> 65, True, TraceFlags(1))
        carrier: dict = {}
        from opentelemetry import propagate

        propagate.inject(carrier, context=trace.set_span_in_context(NonRecordingSpan(parent)))
        return carrier

    def request(task_id: str, **extra: object) -> dict:  # what Celery's tracer receives
        return {"id": task_id, "task": incr.name, "delivery_info": delivery, "root_id": task_id, **extra}

    def run_span(n: int) -> float:
        carrier = headers()
        requests = [request(str(uuid.uuid4()), **carrier) for _ in range(n)]
        t0 = time.process_time()
        for req in requests:
            tracing.start_run(req["id"], incr.name, req, (), {})
            tracing.end_run(req["id"])
        return time.process_time() - t0

    done = (None, None, 0.0, "None")  # what Celery's tracer returns for a success: (R, I, T, Rstr)

    def tracer(task_id: str, args: object, kwargs: object, req: object) -> tuple:
        return done

    def tracer_only(n: int) -> float:  # subtracted from metrics
        requests = [request(str(uuid.uuid4()), agensium_sent_at=time.time()) for _ in range(n)]
        t0 = time.process_time()
        for req in requests:
            tracer(req["id"], (), {}, req)
        return time.process_time() - t0

    def redis_traced(n: int) -> float:
        span = handle.tracer_provider.get_tracer("bench").start_span("run/bench.incr")
        with trace.use_span(span, end_on_exit=True):
            t0 = time.process_time()
            for _ in range(n):
                client.incr("bench:parts")
            return time.process_time() - t0

    def redis_untraced(n: int) -> float:
        t0 = time.process_time()
        for _ in range(n):
            client.incr("bench:parts")
        return time.process_time() - t0

    def metrics(n: int) -> float:
        requests = [request(str(uuid.uuid4()), agensium_sent_at=time.time()) for _ in range(n)]
        received = Request()
        t0 = time.process_time()
        for req in requests:
            metrics_only._on_received(request=received)
            metrics_only.run(tracer, incr, req["id"], (), {}, req)
        return time.process_time() - t0

    def log_line(n: int) -> float:
        t0 = time.process_time()
        for i in range(n):
            log.info("task step %s done", i)
        dt = time.process_time() - t0
        handle.logger_provider.force_flush()
        return dt

    def export(n: int) -> float:  # the spans of n tasks (run + Redis), exported at once
        for _ in range(n):
            redis_traced(1)
        t0 = time.process_time()
        handle.tracer_provider.force_flush()
        return time.process_time() - t0

    spans_for_encoding: list = []
    real_export = exporter._get().export

    def keep(batch):  # noqa: ANN001
        spans_for_encoding[:] = list(batch)
        return real_export(batch)

    def encoding(n: int) -> float:
        exporter._get().export = keep
        export(n)
        exporter._get().export = real_export
        batch = spans_for_encoding
        t0 = time.process_time()
        fastencode.encode_spans(batch)
        return (time.process_time() - t0) * (2 * n) / max(1, len(batch))

    parts = {
        "run span": run_span,
        "Redis span": (redis_traced, redis_untraced),
        "metrics": (metrics, tracer_only),
        "export (encode + POST)": export,
        "of which encoding": encoding,
        "one log line (JSON + OTLP)": log_line,
    }
    best: dict[str, float] = {}
    handle.tracer_provider.force_flush()
    for round_no in range(rounds):
        order = list(parts) if round_no % 2 == 0 else list(reversed(parts))
        for name in order:
            part = parts[name]
            timed = ((name, part[0]), (name + "\0base", part[1])) if isinstance(part, tuple) else ((name, part),)
            for key, func in timed:
                per_task = func(tasks) / tasks * 1e6
                handle.tracer_provider.force_flush()
                best[key] = min(best.get(key, per_task), per_task)
    for name in [n for n in best if n.endswith("\0base")]:
        best[name[:-5]] -= best.pop(name)
    return best


if __name__ == "__main__":
    main()
