"""OTLP trace encoding cost: the official encoder vs ``otel_agensium.fastencode``.

The spans are what a worker exports for a no-op task that does one Redis INCR: a Celery
``run`` span (CONSUMER, remote parent, ~10 attributes) and a Redis ``INCR`` client span
(~7 attributes), made by a real SDK TracerProvider with the distro's resource. A batch
is ``--tasks`` tasks (default 256: 512 spans, the BatchSpanProcessor's export size).

Official = ``trace_encoder.encode_spans(spans).SerializePartialToString()`` (what
``OTLPSpanExporter.export`` runs); fast = ``fastencode.encode_spans(spans)``. Both are
timed on the same spans, alternating round by round; the outputs are checked to be
byte-identical first. Prints microseconds per span (best and median of rounds) and the
ratio.

    python -m bench.encode_spans [--tasks 256] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official_encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from otel_agensium.fastencode import encode_spans as fast_encode_spans


def make_spans(tasks: int) -> list:
    exporter = InMemorySpanExporter()
    resource = Resource.create(
        {
            "service.name": "bench-worker",
            "service.version": "1.4.2",
            "deployment.environment.name": "production",
            "telemetry.distro.name": "otel-agensium",
            "telemetry.distro.version": "0.1.0",
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    celery_tracer = provider.get_tracer("opentelemetry.instrumentation.celery", "0.66b2")
    redis_tracer = provider.get_tracer("opentelemetry.instrumentation.redis", "0.66b2")
    for i in range(tasks):
        task_id = str(uuid.uuid4())
        remote = SpanContext(
            uuid.uuid4().int, uuid.uuid4().int >> 64, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
        )
        parent = trace.set_span_in_context(NonRecordingSpan(remote))
        with celery_tracer.start_as_current_span("run/tasks.noop", context=parent, kind=SpanKind.CONSUMER) as run:
            run.set_attributes(
                {
                    "celery.action": "run",
                    "celery.task_name": "tasks.noop",
                    "messaging.message.id": task_id,
                    "messaging.conversation_id": task_id,
                    "messaging.destination": "celery",
                    "messaging.system": "celery",
                    "celery.hostname": "celery@worker-7c9f6d5b8-x2kqp",
                    "celery.delivery_info": "{'exchange': '', 'routing_key': 'celery', 'redelivered': False}",
                    "celery.retries": 0,
                    "celery.state": "SUCCESS",
                }
            )
            with redis_tracer.start_as_current_span("INCR", kind=SpanKind.CLIENT) as span:
                span.set_attributes(
                    {
                        "db.system": "redis",
                        "db.statement": "INCR ?",
                        "db.redis.database_index": 0,
                        "net.peer.name": "127.0.0.1",
                        "net.peer.port": 6379,
                        "net.transport": "ip_tcp",
                        "db.redis.args_length": 2 + (i % 2),
                    }
                )
    provider.shutdown()
    return list(exporter.get_finished_spans())


def _time(fn, spans, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn(spans)
    return (time.perf_counter() - start) / repeat / len(spans) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=256, help="tasks per batch (2 spans each)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=5, help="encodings per round and variant")
    args = parser.parse_args()

    spans = make_spans(args.tasks)

    def official(batch):
        return official_encode_spans(batch).SerializePartialToString()

    fast = fast_encode_spans
    if official(spans) != fast(spans):
        raise SystemExit("fast encoder output differs from the official encoder's")
    official(spans), fast(spans)  # warm up

    results: dict[str, list[float]] = {"official": [], "fast": []}
    for _ in range(args.rounds):
        results["official"].append(_time(official, spans, args.repeat))
        results["fast"].append(_time(fast, spans, args.repeat))

    size = len(fast(spans))
    print(
        f"{len(spans)} spans per batch ({args.tasks} tasks x 2), {size} bytes serialized, "
        f"{args.rounds} rounds x {args.repeat}"
    )
    print(f"{'encoder':<10} {'best us/span':>13} {'median us/span':>15}")
    for name, values in results.items():
        print(f"{name:<10} {min(values):>13.2f} {statistics.median(values):>15.2f}")
    best = min(results["official"]) / min(results["fast"])
    med = statistics.median(results["official"]) / statistics.median(results["fast"])
    print(f"speed-up (official / fast): best {best:.1f}x, median {med:.1f}x")
    per_task = statistics.median(results["official"]) * 2 - statistics.median(results["fast"]) * 2
    print(f"saved per task (2 spans): {per_task:.0f} us")


if __name__ == "__main__":
    main()
