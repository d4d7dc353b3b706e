"""The span encoders: span, event, link, and the whole ``ExportTraceServiceRequest``
(:func:`encode_spans`), its spans grouped by resource and scope (``groups``)."""

from __future__ import annotations

from collections.abc import Sequence
from struct import Struct
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import SpanContext

from .groups import _ResourceGroups
from .probes import _probe_internals, _probe_span_context
from .wire import (
    _B,
    _EVENT_ATTR_HDR,
    _KIND,
    _LINK_ATTR_HDR,
    _LINK_FLAGS_LOCAL,
    _LINK_FLAGS_REMOTE,
    _SPAN_ATTR_HDR,
    _SPAN_FLAGS_LOCAL,
    _SPAN_FLAGS_REMOTE,
    _cached,
    _field_bytes,
    _header_table,
    _pack_fixed64,
    _put_attributes,
    _remember,
    _varint,
)

# Set at import by the probes; True: read exactly-``ReadableSpan`` spans through their instance
# fields, ``SpanContext`` as the tuple it is.
_FAST = _probe_internals()
_CONTEXT_TUPLE = _probe_span_context()


# -- spans ----------------------------------------------------------------------------------

# SDK spans reach exporters as plain ``ReadableSpan`` objects (``Span._readable_span()``),
# whose public properties copy (``attributes`` wraps the BoundedAttributes in a
# MappingProxyType, ``events`` and ``links`` make tuples) and whose BoundedAttributes
# iterate in Python. For exactly that type the encoder reads the same fields from the
# instance directly; :func:`_probe_internals` checks at import that they are where this
# module expects them and give what the properties give, else every span takes the
# property path.
_KIND_BY_ID = {id(kind): data for kind, data in _KIND.items()}
_pack_times = Struct("<BQBQ").pack  # start_time_unix_nano (7) and end_time_unix_nano (8)
# id(status) -> (status, Span.status field); id(trace_state) -> (trace_state, Span.trace_state field)
_statuses: dict[int, tuple[Any, bytes]] = {}
_trace_states: dict[int, tuple[Any, bytes]] = {}


def _status_field(status: Any) -> bytes:
    """``Span.status`` (field 15); present even when empty, as the official encoder sets it."""
    cached = _cached(_statuses, status)
    if cached is not None:
        return cached
    code = status.status_code.value
    description = status.description
    body = _field_bytes(b"\x12", description.encode()) if description else b""
    if code:
        body += b"\x18" + _varint(code)
    data = _field_bytes(b"\x7a", body)
    if not description:  # the shared default and the bare OK / ERROR: cached; a description seldom repeats
        _remember(_statuses, status, data)
    return data


def _trace_state_field(trace_state: Any) -> bytes:
    """``Span.trace_state`` (field 3): ``key=value`` pairs joined by commas, omitted when empty."""
    cached = _cached(_trace_states, trace_state)
    if cached is not None:
        return cached
    data = b""
    if trace_state is not None:
        text = ",".join([f"{key}={value}" for key, value in trace_state.items()])
        if text:
            data = _field_bytes(b"\x1a", text.encode())
    return _remember(_trace_states, trace_state, data)


def _encode_span(span: ReadableSpan) -> bytes:
    """The body of one ``Span`` message."""
    # One name per field for both paths: the fast one reads SDK internals that are not typed.
    context: Any
    events: Any
    links: Any
    if _FAST and type(span) is ReadableSpan:
        context = span._context
        parent = span._parent
        name = span._name
        kind = span._kind
        start = span._start_time
        end = span._end_time
        attributes = span._attributes
        dropped_attributes = attributes.dropped if isinstance(attributes, BoundedAttributes) else 0
        if type(attributes) is BoundedAttributes and attributes._immutable:  # else iterate a copy, locked
            attributes = attributes._dict
        events = span._events
        dropped_events = events.dropped if isinstance(events, BoundedList) else 0
        links = span._links
        dropped_links = links.dropped if isinstance(links, BoundedList) else 0
        if end is not None:  # ended: no more events or links (else iterate copies, locked)
            if type(events) is BoundedList:
                events = events._dq  # type: ignore[attr-defined]  # SDK internal, probed at import
            if type(links) is BoundedList:
                links = links._dq  # type: ignore[attr-defined]
        status = span._status
    else:
        context = span.get_span_context()
        parent = span.parent
        name = span.name
        kind = span.kind
        start = span.start_time
        end = span.end_time
        attributes = span.attributes
        dropped_attributes = span.dropped_attributes
        events = span.events
        dropped_events = span.dropped_events
        links = span.links
        dropped_links = span.dropped_links
        status = span.status

    if _CONTEXT_TUPLE and type(context) is SpanContext:
        # (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid)
        out = [b"\x0a\x10", context[0].to_bytes(16, "big"), b"\x12\x08", context[1].to_bytes(8, "big")]
        trace_state = context[4]
    else:
        out = [b"\x0a\x10", context.trace_id.to_bytes(16, "big"), b"\x12\x08", context.span_id.to_bytes(8, "big")]
        trace_state = context.trace_state
    if trace_state is not None:
        entry = _trace_states.get(id(trace_state))
        data = entry[1] if entry is not None and entry[0] is trace_state else _trace_state_field(trace_state)
        if data:
            out.append(data)
    if parent:
        if _CONTEXT_TUPLE and type(parent) is SpanContext:
            out += (b"\x22\x08", parent[1].to_bytes(8, "big"))
            flags = _SPAN_FLAGS_REMOTE if parent[2] else _SPAN_FLAGS_LOCAL
        else:
            out += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
            flags = _SPAN_FLAGS_REMOTE if parent.is_remote else _SPAN_FLAGS_LOCAL
    else:
        flags = _SPAN_FLAGS_LOCAL
    if name:
        data = name.encode()
        n = len(data)
        out += (b"\x2a", _B[n] if n < 0x80 else _varint(n), data)
    kind_field = _KIND_BY_ID.get(id(kind))
    out.append(kind_field if kind_field is not None else _KIND[kind])
    if start and end:
        out.append(_pack_times(0x39, start, 0x41, end))
    else:
        if start:
            out += (b"\x39", _pack_fixed64(start))
        if end:
            out += (b"\x41", _pack_fixed64(end))
    if attributes:
        _put_attributes(attributes, _SPAN_ATTR_HDR, out)
    if dropped_attributes:
        out += (b"\x50", _varint(dropped_attributes))
    if events:
        for event in events:
            out.append(_field_bytes(b"\x5a", _encode_event(event)))
    if dropped_events:
        out += (b"\x60", _varint(dropped_events))
    if links:
        for link in links:
            out.append(_field_bytes(b"\x6a", _encode_link(link)))
    if dropped_links:
        out += (b"\x70", _varint(dropped_links))
    if status is not None:
        entry = _statuses.get(id(status))
        out.append(entry[1] if entry is not None and entry[0] is status else _status_field(status))
    out.append(flags)
    return b"".join(out)


def _put_attributes_of(item: Any, hdr: list[bytes], dropped_tag: bytes, out: list[bytes]) -> None:
    """An event's or a link's ``attributes`` and ``dropped_attributes_count`` fields."""
    attributes = item.attributes
    if attributes:
        _put_attributes(attributes, hdr, out)
    dropped = item.dropped_attributes
    if dropped:
        out += (dropped_tag, _varint(dropped))


def _encode_event(event: Any) -> bytes:
    out: list[bytes] = []
    timestamp = event.timestamp
    if timestamp:
        out += (b"\x09", _pack_fixed64(timestamp))
    name = event.name
    if name:
        out.append(_field_bytes(b"\x12", name.encode()))
    _put_attributes_of(event, _EVENT_ATTR_HDR, b"\x20", out)
    return b"".join(out)


def _encode_link(link: Any) -> bytes:
    """A ``Span.Link``: ``trace_state`` is not written, as the official encoder does not."""
    context = link.context
    out = [b"\x0a\x10", context.trace_id.to_bytes(16, "big"), b"\x12\x08", context.span_id.to_bytes(8, "big")]
    _put_attributes_of(link, _LINK_ATTR_HDR, b"\x28", out)
    out.append(_LINK_FLAGS_REMOTE if context.is_remote else _LINK_FLAGS_LOCAL)
    return b"".join(out)


# -- the request ----------------------------------------------------------------------------


def _spans_header(n: int) -> bytes:
    """Tag and length of a ``ScopeSpans.spans`` element of ``n`` bytes."""
    if n < 0x80:
        return _SPANS_HDR[n]
    if n < 0x4000:
        return bytes((0x12, (n & 0x7F) | 0x80, n >> 7))
    return b"\x12" + _varint(n)


_SPANS_HDR = _header_table(0x12)


_NOTHING = object()


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` for ``spans``.

    Equal to ``trace_encoder.encode_spans(spans).SerializeToString()``: spans grouped by
    resource, then by instrumentation scope, each group in order of first appearance.
    """
    if not spans:
        return b""
    groups = _ResourceGroups()
    by_id = groups.by_id
    last_resource = last_scope = _NOTHING
    parts: list[bytes] = []
    for span in spans:
        if _FAST and type(span) is ReadableSpan:
            resource = span._resource
            scope = span._instrumentation_scope or None
        else:
            resource = span.resource
            scope = span.instrumentation_scope or None
        if resource is not last_resource or scope is not last_scope:
            group = by_id.get(id(resource))
            if group is None:
                group = groups.group(resource)
            found = group.parts_by_id.get(id(scope))
            parts = found if found is not None else group.scope_parts(scope)
            last_resource, last_scope = resource, scope
        data = _encode_span(span)
        n = len(data)
        parts += (
            _SPANS_HDR[n] if n < 0x80 else bytes((0x12, (n & 0x7F) | 0x80, n >> 7)) if n < 0x4000 else _spans_header(n),
            data,
        )

    out: list[bytes] = []
    for group in groups.groups:
        size = len(group.head) + len(group.tail)
        scope_parts: list[bytes] = []
        for scope_group in group.groups:
            n = len(scope_group.head) + sum(map(len, scope_group.parts)) + len(scope_group.tail)
            header = _spans_header(n)  # ResourceSpans.scope_spans is field 2 too
            size += len(header) + n
            scope_parts.append(header)
            scope_parts.append(scope_group.head)
            scope_parts += scope_group.parts
            scope_parts.append(scope_group.tail)
        out += (b"\x0a", _varint(size), group.head)
        out += scope_parts
        out.append(group.tail)
    return b"".join(out)
