"""What the fast encoder proves itself against: the official encoder and a probe batch that uses
every part of the format.

Both run in an export thread, on the first batch; everything they use is imported here, when
the exporter is created (a module first imported off the main thread can stay locked in a
forked child: otel_agensium/exporters.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as _official
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AnyValue

# Spans of the first batch encoded both ways (with the probe batch): the official encoder costs
# ~50 us a span, so a whole first batch of 512 would cost a worker ~25 ms once.
CHECK_SPANS = 32


def official_encode(spans: Sequence[ReadableSpan]) -> bytes:
    """What ``OTLPSpanExporter.export`` sends: the official encoder's message, serialized."""
    return _official(spans).SerializePartialToString()


def probe_spans() -> list[ReadableSpan]:
    """A small batch that uses every part of the format: all value types, events, links,
    status with a description, remote and local parents, trace state, two scopes."""
    memory = InMemorySpanExporter()
    # Everything given, nothing read from the environment: the app's sampler, limits, resource and
    # meter provider are not the probe's business (a bad OTEL_TRACES_SAMPLER was said once already).
    provider = TracerProvider(
        sampler=ALWAYS_ON,
        resource=Resource({"service.name": "otel-agensium-probe", "n": 3}),
        shutdown_on_exit=False,
        span_limits=SpanLimits(
            *(128,) * 6, max_attribute_length=SpanLimits.UNSET, max_span_attribute_length=SpanLimits.UNSET
        ),
        meter_provider=NoOpMeterProvider(),
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    remote = SpanContext(
        0x5B8EFFF798038103D269B633813FC60C,
        0xEEE19B7EC3C1B174,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "v1")]),
    )
    values: dict[str, AnyValue] = {
        "s": "text \u00e9",
        "long": "x" * 300,
        "i": -7,
        "big": 1 << 40,
        "f": 2.5,
        "b": True,
        "ss": ["a", "b"],
        "ii": [1, 2],
        "ff": [0.5],
        "bb": [False],
    }
    tracer = provider.get_tracer("otel_agensium.probe", "1", schema_url="https://opentelemetry.io/schemas/1.26.0")
    with tracer.start_as_current_span(
        "probe/run",
        context=set_span_in_context(NonRecordingSpan(remote)),
        kind=SpanKind.CONSUMER,
        attributes=values,
        links=[Link(remote, {"l": 1})],
    ) as run:
        run.add_event("exception", {"exception.type": "ValueError", "exception.message": "boom"})
        run.set_status(Status(StatusCode.ERROR, "boom"))
        with provider.get_tracer("otel_agensium.probe.other").start_as_current_span("INCRBY", kind=SpanKind.CLIENT):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())
