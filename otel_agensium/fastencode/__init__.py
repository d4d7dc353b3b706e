"""A fast, exact OTLP trace encoder and the OTLP/HTTP span exporter that uses it.

The official encoder (``opentelemetry.exporter.otlp.proto.common.trace_encoder``)
builds one protobuf message object per span, attribute, value, event and link and then
serializes the tree: 50-60 us for a span with ten attributes, even with the upb
backend. :func:`encode_spans` writes the protobuf wire format of
``ExportTraceServiceRequest`` directly, in 6-8 us for the same span
(``python -m bench.encode_spans``), with what repeats from span to span cached:

* the encoded ``Resource`` and ``InstrumentationScope`` (with their schema URLs), keyed
  by object identity in small bounded dicts that hold a reference to the object, so an
  id cannot be reused while its entry lives;
* the encoded prefix of each attribute key (bounded);
* the encoded ``Span.status`` when it has no description (the SDK shares one default
  ``Status`` object) and the encoded ``trace_state``, by identity as above.

Spans of exactly the SDK's ``ReadableSpan`` type (what every SDK span processor hands
to exporters) are read through their instance fields rather than their copying
properties; an import-time probe checks those fields against the properties and turns
this off if an SDK version moved them.

Its output is the message the official encoder produces, byte for byte: same grouping
(resources, then scopes, compared with ``==`` as the official ``defaultdict`` does),
same order (first appearance), same fields, same handling of values the official
encoder cannot encode (that attribute is logged and skipped, the rest of the span is
kept). Fields are written in field-number order, as upb writes them. The field numbers
are those of ``opentelemetry/proto/trace/v1/trace.proto``, ``common.proto`` and
``resource.proto`` (checked against the installed descriptors by the tests).

Like the official encoder, it does not write ``Link.trace_state`` and sets ``flags``
to ``SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`` (0x100), plus
``SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`` (0x200) when the parent (for a link: the linked
context) is remote; the W3C trace flags are not copied into ``flags``.

Modules: ``wire`` (protobuf wire primitives, field tags, attribute values, identity caches),
``groups`` (resource and scope fields; spans grouped by them), ``spans`` (span, event and
link encoders; :func:`encode_spans`), ``probes`` (import-time checks of the SDK internals
the fast path reads), ``check`` (the official encoder and the probe batch the exporter
proves itself against) and ``exporter`` (:class:`FastOTLPSpanExporter`).
"""

from .check import CHECK_SPANS, official_encode, probe_spans
from .exporter import FastOTLPSpanExporter
from .spans import encode_spans

__all__ = ["CHECK_SPANS", "FastOTLPSpanExporter", "encode_spans", "official_encode", "probe_spans"]
