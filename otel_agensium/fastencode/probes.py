"""Import-time probes: are the SDK's span internals and ``SpanContext`` where the fast path reads them?

Each returns False (and says so once, through :func:`otel_agensium.errors.degraded`) when an SDK
version moved them; the encoder then reads spans through their public properties.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

from ..errors import degraded, report


def _probe_internals() -> bool:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace.span import TraceState

        context = SpanContext(1, 2, is_remote=False, trace_state=TraceState([("k", "v")]))
        parent = SpanContext(1, 3, is_remote=True)
        attributes = BoundedAttributes(None, {"a": 1, "b": "x", "c": 2.5})
        attributes.dropped = 1
        events = BoundedList.from_seq(None, [Event("e1"), Event("e2")])
        events.dropped = 1
        links = BoundedList.from_seq(None, [Link(parent), Link(context)])
        links.dropped = 1
        span: Any = ReadableSpan(  # its internals are what is probed: not typed
            "probe",
            context,
            parent,
            Resource({"r": 1}),
            attributes,
            events,
            links,
            SpanKind.CLIENT,
            None,
            Status(StatusCode.ERROR, "d"),
            10,
            20,
            InstrumentationScope("s"),
        )
        if not (
            (span._context, span._parent, span._name, span._kind) == (context, parent, "probe", SpanKind.CLIENT)
            and (span._start_time, span._end_time, span._status) == (10, 20, span.status)
            and span._resource is span.resource
            and span._instrumentation_scope is span.instrumentation_scope
            and type(span._attributes) is BoundedAttributes
            and list(span._attributes._dict.items()) == list(span.attributes.items())
            and span._attributes.dropped == span.dropped_attributes == 1
            and span._attributes._immutable
            and tuple(span._events) == span.events
            and span._events.dropped == span.dropped_events == 1
            and tuple(span._links) == span.links
            and span._links.dropped == span.dropped_links == 1
            and tuple(span._events._dq) == span.events
            and tuple(span._links._dq) == span.links
        ):
            degraded("fastencode._probe_internals", "the SDK's span internals moved; encoding via public properties")
            return False
    except Exception:  # noqa: BLE001 - internals moved: use the public properties
        report("fastencode._probe_internals")
        return False
    return True


def _probe_span_context() -> bool:
    """SpanContext is a tuple (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid)."""
    try:
        from opentelemetry.trace.span import TraceState

        state = TraceState([("k", "v")])
        context = SpanContext(5, 6, is_remote=True, trace_state=state)
        return (
            isinstance(context, tuple)
            and (context[0], context[1], context[2], context[4]) == (5, 6, True, state)
            and (context.trace_id, context.span_id, context.is_remote) == (5, 6, True)
            and context.trace_state is context[4]
        ) or degraded("fastencode._probe_span_context", "SpanContext is no longer the tuple it was; slower path")
    except Exception:  # noqa: BLE001
        report("fastencode._probe_span_context")
        return False
