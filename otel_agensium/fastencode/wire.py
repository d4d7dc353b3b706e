"""Protobuf wire-format primitives of the fast encoder: varints, fixed-width fields, the field
tags of the OTLP trace messages, and ``AnyValue`` / ``KeyValue`` attribute encoding."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from struct import Struct
from typing import Any, TypeVar

from opentelemetry.trace import SpanKind

# Attributes that cannot be encoded are logged where the official encoder logs them.
_logger = logging.getLogger("opentelemetry.exporter.otlp.proto.common._internal")

# -- wire-format primitives -----------------------------------------------------------------

_B = [bytes((i,)) for i in range(128)]  # one-byte varints
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_TWO64 = 1 << 64
_pack_fixed64 = Struct("<Q").pack
_pack_double = Struct("<d").pack
_pack_fixed32 = Struct("<I").pack


def _varint(n: int) -> bytes:
    """Unsigned varint (``n`` >= 0)."""
    if n < 0x80:
        return _B[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _int64(v: int) -> bytes:
    """An int64 as a varint: negative values in ten bytes (two's complement)."""
    if v >= 0:
        if v > _INT64_MAX:
            raise ValueError(f"Value out of range: {v}")
        return _varint(v)
    if v < _INT64_MIN:
        raise ValueError(f"Value out of range: {v}")
    return _varint(v + _TWO64)


def _field_bytes(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field."""
    n = len(data)
    return tag + (_B[n] if n < 0x80 else _varint(n)) + data


def _header_table(tag: int) -> list[bytes]:
    """``table[n]`` = tag byte + one-byte length ``n``, for ``n`` < 128."""
    return [bytes((tag, n)) for n in range(128)]


# Field tags, ``(field_number << 3) | wire_type``; wire types: 0 varint, 1 fixed64,
# 2 length-delimited, 5 fixed32.
#   ExportTraceServiceRequest: resource_spans=1
#   ResourceSpans: resource=1, scope_spans=2, schema_url=3
#   ScopeSpans:    scope=1, spans=2, schema_url=3
#   Resource:      attributes=1
#   InstrumentationScope: name=1, version=2, attributes=3
#   Span: trace_id=1 span_id=2 trace_state=3 parent_span_id=4 name=5 kind=6
#         start_time_unix_nano=7 (fixed64) end_time_unix_nano=8 (fixed64) attributes=9
#         dropped_attributes_count=10 events=11 dropped_events_count=12 links=13
#         dropped_links_count=14 status=15 flags=16 (fixed32)
#   Span.Event: time_unix_nano=1 (fixed64) name=2 attributes=3 dropped_attributes_count=4
#   Span.Link:  trace_id=1 span_id=2 trace_state=3 attributes=4 dropped_attributes_count=5
#               flags=6 (fixed32)
#   Status: message=2 code=3
#   KeyValue: key=1 value=2;  KeyValueList / ArrayValue: values=1
#   AnyValue: string_value=1 bool_value=2 int_value=3 double_value=4 (fixed64)
#             array_value=5 kvlist_value=6 bytes_value=7
_SPAN_ATTR_HDR = _header_table(0x4A)  # Span.attributes
_EVENT_ATTR_HDR = _header_table(0x1A)  # Span.Event.attributes
_LINK_ATTR_HDR = _header_table(0x22)  # Span.Link.attributes
_RESOURCE_ATTR_HDR = _header_table(0x0A)  # Resource.attributes
_SCOPE_ATTR_HDR = _header_table(0x1A)  # InstrumentationScope.attributes

# AnyValue string_value header + the KeyValue.value length before it, for short strings:
# _STR_HDR[n] = varint(n + 2) + 0x0a + varint(n), n < 126.
_STR_HDR = [bytes((n + 2, 0x0A, n)) for n in range(126)]
_TRUE = b"\x10\x01"
_FALSE = b"\x10\x00"

_SPAN_FLAGS_LOCAL = b"\x85\x01" + _pack_fixed32(0x100)  # Span.flags, parent local or root
_SPAN_FLAGS_REMOTE = b"\x85\x01" + _pack_fixed32(0x300)  # Span.flags, parent remote
_LINK_FLAGS_LOCAL = b"\x35" + _pack_fixed32(0x100)
_LINK_FLAGS_REMOTE = b"\x35" + _pack_fixed32(0x300)

# Span.kind (field 6) with the Span.SpanKind values of trace.proto.
_KIND = {
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}

# -- caches ---------------------------------------------------------------------------------

_KEY_CACHE_MAX = 4096
_OBJ_CACHE_MAX = 64
# key -> KeyValue.key field + the KeyValue.value tag (0x12)
_keys: dict[str, bytes] = {}


_KEY_CACHED_MAX_LEN = 256  # longer keys are encoded every time: the cache stays small


def _key_prefix(key: str) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"bad argument type for built-in operation: key {key!r}")
    data = key.encode()
    prefix = (_field_bytes(b"\x0a", data) if data else b"") + b"\x12"
    if len(data) <= _KEY_CACHED_MAX_LEN:
        if len(_keys) >= _KEY_CACHE_MAX:
            _keys.clear()
        _keys[key] = prefix
    return prefix


# -- values and attributes ------------------------------------------------------------------


def _any_value(value: Any) -> bytes:
    """The body of an ``AnyValue``, with the official encoder's type checks and order."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _TRUE if value else _FALSE
    if isinstance(value, str):
        return _field_bytes(b"\x0a", value.encode())
    if isinstance(value, int):
        return b"\x18" + _int64(value)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field_bytes(b"\x3a", value)
    if isinstance(value, Sequence):
        parts = []
        for item in value:
            body = _any_value(item)
            parts.append(_field_bytes(b"\x0a", body))
        return _field_bytes(b"\x2a", b"".join(parts))
    if isinstance(value, Mapping):
        parts = []
        for key, item in value.items():
            prefix = _key_prefix(str(key))
            body = _any_value(item)
            parts.append(_field_bytes(b"\x0a", prefix + _varint(len(body)) + body))
        return _field_bytes(b"\x32", b"".join(parts))
    raise Exception(f"Invalid type {type(value)} of value {value}")  # noqa: TRY002 - as the official encoder


def _put_attributes(attributes: Any, hdr: list[bytes], out: list[bytes]) -> None:
    """Append the ``KeyValue`` fields of ``attributes`` (tag and lengths included) to ``out``.

    An attribute that cannot be encoded is logged and skipped, as the official encoder does.
    """
    keys = _keys
    for key, value in attributes.items():
        try:
            prefix = keys.get(key)
            if prefix is None:
                prefix = _key_prefix(key)
            kind = type(value)
            if kind is str:
                data = value.encode()
                n = len(data)
                if n < 126:
                    size = len(prefix) + n + 3
                    out += (hdr[size] if size < 0x80 else hdr[0][:1] + _varint(size), prefix, _STR_HDR[n], data)
                    continue
                body = b"\x0a" + _varint(n) + data
            elif kind is int:
                body = b"\x18" + (_B[value] if 0 <= value < 0x80 else _int64(value))
            elif kind is bool:
                body = _TRUE if value else _FALSE
            elif kind is float:
                body = b"\x21" + _pack_double(value)
            else:
                body = _any_value(value)
            n = len(body)
            size = len(prefix) + n + (1 if n < 0x80 else len(_varint(n)))
            out += (
                hdr[size] if size < 0x80 else hdr[0][:1] + _varint(size),
                prefix,
                _B[n] if n < 0x80 else _varint(n),
                body,
            )
        except Exception as error:  # noqa: BLE001 - as the official encoder: log, skip the attribute
            _logger.exception("Failed to encode key %s: %s", key, error)


def _attributes_bytes(attributes: Any, hdr: list[bytes]) -> bytes:
    if not attributes:
        return b""
    out: list[bytes] = []
    _put_attributes(attributes, hdr, out)
    return b"".join(out)


# -- identity caches ------------------------------------------------------------------------

# Encoded fields of objects that repeat from span to span, keyed by identity: each entry holds
# the object itself, so its id cannot be reused while the entry lives. Bounded: a full cache
# is emptied. The per-span path reads _statuses and _trace_states inline (no call); on a miss,
# and for resources and scopes (once per group), it goes through _cached and _remember
# (spans.py, groups.py).
_V = TypeVar("_V")


def _cached(cache: dict[int, tuple[Any, _V]], obj: Any) -> _V | None:
    """What ``cache`` holds for this very object, else None."""
    entry = cache.get(id(obj))
    return entry[1] if entry is not None and entry[0] is obj else None


def _remember(cache: dict[int, tuple[Any, _V]], obj: Any, value: _V) -> _V:
    if len(cache) >= _OBJ_CACHE_MAX:
        cache.clear()
    cache[id(obj)] = (obj, value)
    return value
