"""fastencode.encode_spans against the official OTLP encoder, on spans from a real SDK TracerProvider.

Every case checks two things: our bytes decode (``ExportTraceServiceRequest.FromString``)
to a message equal to the official ``encode_spans(spans)``, and they are byte-identical to
the official ``SerializeToString()`` (same fields, same order, same grouping).
"""

from __future__ import annotations

import logging
import math

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as official_encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from otel_agensium import fastencode
from otel_agensium.fastencode import FastOTLPSpanExporter, encode_spans
from tests.otlp_receiver import Receiver, wait_for

RESOURCE = Resource({"service.name": "worker", "service.version": "1.2.3", "host.cores": 8})


def provider(resource: Resource = RESOURCE, **kwargs) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider(resource=resource, **kwargs)
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


def assert_same(spans) -> bytes:
    official = official_encode_spans(spans)
    ours = encode_spans(spans)
    assert isinstance(ours, bytes)
    assert ExportTraceServiceRequest.FromString(ours) == official
    assert ours == official.SerializeToString()
    return ours


def remote_context(trace_state: TraceState | None = None) -> SpanContext:
    return SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=trace_state,
    )


# -- the field numbers this encoder writes, against the installed descriptors ---------------

FIELDS = {
    ExportTraceServiceRequest: {"resource_spans": 1},
    trace_pb2.ResourceSpans: {"resource": 1, "scope_spans": 2, "schema_url": 3},
    trace_pb2.ScopeSpans: {"scope": 1, "spans": 2, "schema_url": 3},
    resource_pb2.Resource: {"attributes": 1},
    common_pb2.InstrumentationScope: {"name": 1, "version": 2, "attributes": 3},
    trace_pb2.Span: {
        "trace_id": 1,
        "span_id": 2,
        "trace_state": 3,
        "parent_span_id": 4,
        "name": 5,
        "kind": 6,
        "start_time_unix_nano": 7,
        "end_time_unix_nano": 8,
        "attributes": 9,
        "dropped_attributes_count": 10,
        "events": 11,
        "dropped_events_count": 12,
        "links": 13,
        "dropped_links_count": 14,
        "status": 15,
        "flags": 16,
    },
    trace_pb2.Span.Event: {"time_unix_nano": 1, "name": 2, "attributes": 3, "dropped_attributes_count": 4},
    trace_pb2.Span.Link: {"trace_id": 1, "span_id": 2, "attributes": 4, "dropped_attributes_count": 5, "flags": 6},
    trace_pb2.Status: {"message": 2, "code": 3},
    common_pb2.KeyValue: {"key": 1, "value": 2},
    common_pb2.AnyValue: {
        "string_value": 1,
        "bool_value": 2,
        "int_value": 3,
        "double_value": 4,
        "array_value": 5,
        "kvlist_value": 6,
        "bytes_value": 7,
    },
    common_pb2.ArrayValue: {"values": 1},
    common_pb2.KeyValueList: {"values": 1},
}


def test_field_numbers_match_the_installed_proto():
    for message, fields in FIELDS.items():
        by_name = message.DESCRIPTOR.fields_by_name
        assert {name: by_name[name].number for name in fields} == fields, message.DESCRIPTOR.full_name
    span = trace_pb2.Span.DESCRIPTOR.fields_by_name
    assert span["start_time_unix_nano"].type == span["start_time_unix_nano"].TYPE_FIXED64
    assert span["flags"].type == span["flags"].TYPE_FIXED32
    assert trace_pb2.Span.SpanKind.SPAN_KIND_CONSUMER == 5
    assert trace_pb2.SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK == 0x100
    assert trace_pb2.SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK == 0x200


def test_sdk_internals_probe_passed():
    # The fast path (instance fields instead of copying properties) is on with this SDK.
    assert fastencode.spans._FAST is True


# -- spans ------------------------------------------------------------------------------------


def test_no_spans():
    assert encode_spans([]) == b"" == official_encode_spans([]).SerializeToString()
    assert encode_spans(()) == b""


ATTRIBUTES = {
    "str": "value",
    "empty": "",
    "unicode": "héllo wörld ✓ 日本語 🚀",
    "long.127": "x" * 127,
    "long.200": "y" * 200,
    "long.20k": "z" * 20_000,
    "true": True,
    "false": False,
    "zero": 0,
    "one": 1,
    "127": 127,
    "128": 128,
    "big": 2**40 + 7,
    "int64.max": 2**63 - 1,
    "int64.min": -(2**63),
    "minus.one": -1,
    "negative": -123456789,
    "float": 3.25,
    "float.zero": 0.0,
    "float.negzero": -0.0,
    "float.neg": -1e-300,
    "float.inf": math.inf,
    "float.ninf": -math.inf,
    "bytes": b"\x00\x01\xff",
    "bytes.empty": b"",
    "array.str": ["a", "", "ü", "long" * 50],
    "array.bool": [True, False, True],
    "array.int": [0, -1, 2**62, 7],
    "array.float": [0.5, -2.0, 1e10],
    "array.empty": [],
    "array.with.none": ["a", None, "b"],
    "mapping": {"inner": "v", "n": 3, "nested": {"deep": [1, 2]}},
    "ключ": "unicode key",
    "k" * 300: "a long key",
}


def test_attribute_types_on_a_real_span():
    tp, exporter = provider()
    tracer = tp.get_tracer("test")
    with tracer.start_as_current_span("attrs", attributes=ATTRIBUTES):
        pass
    spans = exporter.get_finished_spans()
    data = assert_same(spans)
    decoded = ExportTraceServiceRequest.FromString(data).resource_spans[0].scope_spans[0].spans[0]
    assert len(decoded.attributes) == len(ATTRIBUTES)


def _random_value(rng, depth=0):
    kind = rng.randrange(8 if depth < 2 else 6)
    if kind == 0:
        length = rng.choice([0, 1, 62, 63, 64, 124, 125, 126, 127, 128, 200, 16_380, 16_384])
        return "".join(rng.choice("aZ09 é€😀\n") for _ in range(length))
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, 127, 128, 16_383, 16_384, 2**31, 2**63 - 1, -1, -128, -(2**63), rng.getrandbits(62)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1.5, -3.75e-8, 1e300, math.inf, rng.random()])
    if kind == 4:
        return bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 3, 130])))
    if kind == 5:
        return None
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"m{i}": _random_value(rng, depth + 1) for i in range(rng.randrange(3))}


def test_random_attributes_events_and_links():
    import random

    rng = random.Random(20261125)
    tp, exporter = provider()
    tracers = [tp.get_tracer(f"scope-{i}", f"{i}.0") for i in range(3)]
    for i in range(150):
        attributes = {f"key.{rng.randrange(40)}": _random_value(rng) for _ in range(rng.randrange(12))}
        links = [Link(remote_context(), {"n": rng.randrange(1000)})] if i % 7 == 0 else []
        with rng.choice(tracers).start_as_current_span(f"span-{i}", attributes=attributes, links=links) as span:
            if i % 5 == 0:
                span.add_event("evt", {f"e{j}": _random_value(rng) for j in range(3)})
    assert_same(exporter.get_finished_spans())


def test_nan_is_byte_identical():
    tp, exporter = provider()
    with tp.get_tracer("test").start_as_current_span("nan", attributes={"nan": math.nan, "a": [math.nan, 1.0]}):
        pass
    spans = exporter.get_finished_spans()
    # NaN != NaN, so only the bytes can be compared.
    assert encode_spans(spans) == official_encode_spans(spans).SerializeToString()


def test_values_the_official_encoder_cannot_encode_are_skipped_the_same_way(caplog):
    tp, exporter = provider()
    attributes = {
        "before": "kept",
        "int64.over": 2**63,
        "int64.under": -(2**63) - 1,
        "array.over": [1, 2**64],
        "surrogate": "\ud800",
        "key.\udc00": "bad key",
        "after": 1,
    }
    with tp.get_tracer("test").start_as_current_span("bad", attributes=attributes):
        pass
    spans = exporter.get_finished_spans()
    with caplog.at_level(logging.ERROR):
        data = assert_same(spans)
    decoded = ExportTraceServiceRequest.FromString(data).resource_spans[0].scope_spans[0].spans[0]
    assert [kv.key for kv in decoded.attributes] == ["before", "after"]
    assert any("Failed to encode key int64.over" in r.getMessage() for r in caplog.records)


def test_parents_kinds_events_links_status():
    tp, exporter = provider()
    tracer = tp.get_tracer("opentelemetry.instrumentation.celery", "0.66b2")
    state = TraceState([("vendor", "abc"), ("other", "x-1")])
    remote_parent = trace.set_span_in_context(NonRecordingSpan(remote_context(state)))
    link_remote = Link(remote_context(), attributes={"link.kind": "follows", "n": 2})
    link_local = Link(SpanContext(7, 8, is_remote=False, trace_state=state), attributes={"link.arr": [1, 2]})
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER):
        with tracer.start_as_current_span("child.internal") as child:
            child.add_event("checkpoint", {"step": 1, "what": "ok"}, timestamp=1_700_000_000_123_456_789)
            child.add_event("bare")
            child.set_status(Status(StatusCode.OK))
    with tracer.start_as_current_span(
        "run/t.incr", context=remote_parent, kind=SpanKind.CONSUMER, links=[link_remote, link_local]
    ) as run:
        run.set_attribute("celery.task_id", "a2c5b1f0-3f5e-4c1e-9d7a-6b8e2f1c0d3a")
        try:
            raise ValueError("boom: ünïcode")
        except ValueError as exc:
            run.record_exception(exc, attributes={"extra": True})
            run.set_status(Status(StatusCode.ERROR, "task failed: ValueError ✗"))
    for kind in (SpanKind.CLIENT, SpanKind.PRODUCER):
        with tracer.start_as_current_span(f"kind.{kind.name}", kind=kind) as span:
            span.set_status(Status(StatusCode.ERROR))
    with tracer.start_as_current_span(""):  # empty name
        pass
    spans = exporter.get_finished_spans()
    data = assert_same(spans)

    decoded = ExportTraceServiceRequest.FromString(data).resource_spans[0].scope_spans[0].spans
    by_name = {s.name: s for s in decoded}
    run = by_name["run/t.incr"]
    assert run.trace_state == "vendor=abc,other=x-1"
    assert run.parent_span_id == (0x00F067AA0BA902B7).to_bytes(8, "big")
    assert run.flags == 0x300  # parent is remote
    assert run.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert run.status.message == "task failed: ValueError ✗"
    assert run.events[0].name == "exception"
    assert {kv.key for kv in run.events[0].attributes} >= {"exception.type", "exception.message", "extra"}
    assert [len(link.attributes) for link in run.links] == [2, 1]
    assert [link.flags for link in run.links] == [0x300, 0x100]
    assert by_name["root"].parent_span_id == b"" and by_name["root"].flags == 0x100
    assert by_name["child.internal"].events[0].time_unix_nano == 1_700_000_000_123_456_789


def test_dropped_counts():
    limits = SpanLimits(max_span_attributes=2, max_events=1, max_links=1, max_event_attributes=1, max_link_attributes=1)
    tp, exporter = provider(span_limits=limits)
    links = [Link(remote_context(), {"c": 3}), Link(remote_context(), {"a": 1, "b": 2})]  # the newest is kept
    with tp.get_tracer("test").start_as_current_span("limited", links=links) as span:
        span.set_attributes({"a": 1, "b": 2, "c": 3, "d": 4})
        span.add_event("e0")
        span.add_event("e1", {"x": 1, "y": 2})  # the newest event is kept
    spans = exporter.get_finished_spans()
    data = assert_same(spans)
    decoded = ExportTraceServiceRequest.FromString(data).resource_spans[0].scope_spans[0].spans[0]
    assert (decoded.dropped_attributes_count, decoded.dropped_events_count, decoded.dropped_links_count) == (2, 1, 1)
    assert decoded.events[0].dropped_attributes_count == 1
    assert decoded.links[0].dropped_attributes_count == 1


def test_resources_and_scopes_are_grouped_as_the_official_encoder_does():
    res_a = Resource({"service.name": "a", "k": [1, 2]}, schema_url="https://opentelemetry.io/schemas/1.21.0")
    res_a_twin = Resource({"service.name": "a", "k": [1, 2]}, schema_url="https://opentelemetry.io/schemas/1.21.0")
    res_b = Resource({"service.name": "b", "unicode": "ß"})
    tp_a, exp_a = provider(res_a)
    tp_a2, exp_a2 = provider(res_a_twin)
    tp_b, exp_b = provider(res_b)
    scopes = [
        ("celery", "1.0", "https://opentelemetry.io/schemas/1.11.0", {"scope.attr": "x", "n": 1}),
        ("celery", "1.0", "https://opentelemetry.io/schemas/1.11.0", {"scope.attr": "other"}),  # not equal
        ("redis", None, None, None),
        ("", None, None, None),
    ]
    for tp in (tp_a, tp_a2, tp_b):
        tracers = [
            tp.get_tracer(name, version, schema_url, attributes) for name, version, schema_url, attributes in scopes
        ]
        for round_ in range(3):
            for i, tracer in enumerate(tracers):
                with tracer.start_as_current_span(f"span-{round_}-{i}"):
                    pass
    # Interleave resources and scopes so that groups and first-appearance order matter.
    finished = [exp.get_finished_spans() for exp in (exp_a, exp_b, exp_a2)]
    spans = [s for triple in zip(*finished, strict=True) for s in triple]
    data = assert_same(spans)
    decoded = ExportTraceServiceRequest.FromString(data)
    assert len(decoded.resource_spans) == 2  # res_a and its equal twin share a group
    assert len(decoded.resource_spans[0].scope_spans) == 4
    assert decoded.resource_spans[0].schema_url == "https://opentelemetry.io/schemas/1.21.0"
    assert decoded.resource_spans[0].scope_spans[0].schema_url == "https://opentelemetry.io/schemas/1.11.0"
    # the cached resource and scope encodings give the same bytes the next time
    assert_same(spans)
    assert_same(list(reversed(spans)))


def test_spans_without_scope_and_built_by_hand():
    ctx = SpanContext(1, 2, is_remote=False, trace_state=TraceState([("a", "1")]))
    parent = SpanContext(1, 3, is_remote=True)
    spans = [
        # no scope, plain-dict attributes, no end time
        ReadableSpan("no-scope", ctx, parent, RESOURCE, {"a": "b", "bad": object()}, start_time=5),
        ReadableSpan("empty", ctx, resource=RESOURCE, status=None),  # no status at all
        ReadableSpan(
            "events",
            ctx,
            None,
            RESOURCE,
            None,
            (Event("e", {"k": "v"}, timestamp=9),),
            (Link(parent, None),),
            SpanKind.PRODUCER,
            None,
            Status(StatusCode.OK, "ignored for OK"),
            1,
            2,
            InstrumentationScope("s", "v", "", {"a": 1}),
        ),
    ]
    assert_same(spans)


def test_span_not_yet_ended():
    tp, exporter = provider()
    live = tp.get_tracer("test").start_span("live", attributes={"a": 1})
    live.add_event("e")
    try:
        assert_same([live._readable_span()])  # mutable attributes, no end time
    finally:
        live.end()
    assert_same(exporter.get_finished_spans())


def test_public_property_path_when_the_sdk_internals_are_not_as_expected(monkeypatch):
    tp, exporter = provider()
    tracer = tp.get_tracer("test", "1")
    state = TraceState([("v", "1")])
    parent = trace.set_span_in_context(NonRecordingSpan(remote_context(state)))
    with tracer.start_as_current_span(
        "p", context=parent, attributes=ATTRIBUTES, links=[Link(remote_context(), {"l": 1})]
    ) as span:
        span.record_exception(RuntimeError("x"))
    spans = exporter.get_finished_spans()
    fast = encode_spans(spans)
    monkeypatch.setattr(fastencode.spans, "_FAST", False)
    monkeypatch.setattr(fastencode.spans, "_CONTEXT_TUPLE", False)
    assert assert_same(spans) == fast


class _SubclassedSpan(ReadableSpan):
    """Not exactly ReadableSpan: encoded through the public properties."""


def test_property_path_gives_the_same_bytes():
    tp, exporter = provider()
    tracer = tp.get_tracer("test", "1")
    with tracer.start_as_current_span("p", attributes=ATTRIBUTES, links=[Link(remote_context(), {"l": 1})]) as s:
        s.add_event("e", {"k": "v"})
    (span,) = exporter.get_finished_spans()
    copy = _SubclassedSpan(
        span.name,
        span.context,
        span.parent,
        span.resource,
        span._attributes,
        span._events,
        span._links,
        span.kind,
        None,
        span.status,
        span.start_time,
        span.end_time,
        span.instrumentation_scope,
    )
    assert encode_spans([copy]) == encode_spans([span]) == official_encode_spans([span]).SerializeToString()


def test_many_spans_and_bounded_caches():
    # Scope groups above 16 KiB (3-byte lengths), more resources and scopes than the caches hold.
    spans = []
    for i in range(fastencode.wire._OBJ_CACHE_MAX + 6):
        tp, exporter = provider(Resource({"service.name": f"svc-{i}", "i": i}))
        tracer = tp.get_tracer(f"scope-{i}", str(i))
        for j in range(3 if i else 200):
            with tracer.start_as_current_span(f"s{j}", attributes={"j": j, "text": "t" * (j % 150)}):
                pass
        spans.extend(exporter.get_finished_spans())
    assert_same(spans)
    assert len(fastencode.groups._resources) <= fastencode.wire._OBJ_CACHE_MAX
    assert len(fastencode.groups._scopes) <= fastencode.wire._OBJ_CACHE_MAX


# -- the exporter -----------------------------------------------------------------------------


def _celery_like_spans(n: int = 20):
    tp, exporter = provider()
    celery_tracer = tp.get_tracer("opentelemetry.instrumentation.celery", "0.66b2")
    redis_tracer = tp.get_tracer("opentelemetry.instrumentation.redis", "0.66b2")
    parent = trace.set_span_in_context(NonRecordingSpan(remote_context()))
    for i in range(n):
        with celery_tracer.start_as_current_span(
            "run/t.incr",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={"celery.action": "run", "celery.task_id": str(i)},
        ):
            with redis_tracer.start_as_current_span(
                "INCR", kind=SpanKind.CLIENT, attributes={"db.system": "redis", "net.peer.port": 6379}
            ):
                pass
    return exporter.get_finished_spans()


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_exporter_sends_the_same_spans_to_an_otlp_receiver(compression):
    spans = _celery_like_spans()
    with Receiver() as receiver:
        exporter = FastOTLPSpanExporter(
            endpoint=f"{receiver.endpoint}/v1/traces", compression=compression, headers={"x-test": "1"}, timeout=5
        )
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        wait_for(lambda: receiver.traces)
        exporter.shutdown()
        assert receiver.traces[0] == official_encode_spans(spans)
        assert receiver.raw[0] == official_encode_spans(spans).SerializeToString()
        received = sorted((s["span_id"], s["name"]) for s in receiver.spans())
        assert received == sorted((f"{s.context.span_id:016x}", s.name) for s in spans)
        assert exporter.export(spans) is SpanExportResult.FAILURE  # after shutdown, like the parent
        assert len(receiver.traces) == 1


def test_exporter_keeps_the_parents_request_size_limit_and_failure_result():
    spans = _celery_like_spans(5)
    with Receiver() as receiver:
        too_small = FastOTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces", max_request_size=100)
        assert too_small.export(spans) is SpanExportResult.FAILURE
        wrong_path = FastOTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/nothing", timeout=2)
        assert wrong_path.export(spans) is SpanExportResult.FAILURE  # 404, not retryable
        assert receiver.traces == []


def test_parent_export_is_the_one_this_exporter_copies():
    # FastOTLPSpanExporter.export is the parent's with the serialization replaced; when the
    # parent's export changes (a new exporter version), this says to compare them again.
    import inspect

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    source = inspect.getsource(OTLPSpanExporter.export)
    for line in (
        "encode_spans(spans).SerializePartialToString()",
        "self._metrics.export_operation(len(spans))",
        "_is_request_too_large(serialized_data, self._max_request_size)",
        "self._client.export(serialized_data)",
    ):
        assert line in source


def test_exporter_defers_to_the_parent_without_its_helpers(monkeypatch):
    monkeypatch.setattr(fastencode.exporter, "_is_request_too_large", None)
    spans = _celery_like_spans(2)
    with Receiver() as receiver:
        exporter = FastOTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        wait_for(lambda: receiver.traces)
        assert receiver.raw[0] == official_encode_spans(spans).SerializeToString()


def test_span_exporter_setting_uses_the_fast_exporter_for_http():
    from otel_agensium.exporters import span_exporter
    from otel_agensium.settings import load

    with Receiver() as receiver:
        exporter = span_exporter(load({"endpoint": receiver.endpoint}, environ={}))
        assert isinstance(exporter._get(), FastOTLPSpanExporter)
        spans = _celery_like_spans(2)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        wait_for(lambda: receiver.traces)
        assert receiver.traces[0] == official_encode_spans(spans)
        exporter.shutdown()
