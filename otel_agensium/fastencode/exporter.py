"""The OTLP/HTTP span exporter that serializes with the fast encoder, once it has proven itself."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import _logger as _exporter_logger
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.semconv.attributes.http_attributes import HTTP_RESPONSE_STATUS_CODE

from .check import CHECK_SPANS, official_encode, probe_spans
from .spans import encode_spans

try:  # helpers of the parent's export (opentelemetry-exporter-otlp-proto-http 1.45)
    from opentelemetry.exporter.otlp.proto.http._common import (
        RequestPayloadTooLargeError as _RequestPayloadTooLargeError,
    )
    from opentelemetry.exporter.otlp.proto.http._common import _is_request_too_large
except ImportError:  # pragma: no cover - another version: FastOTLPSpanExporter defers to the parent
    _RequestPayloadTooLargeError = None  # type: ignore[assignment,misc]
    _is_request_too_large = None  # type: ignore[assignment]


_log = logging.getLogger("otel_agensium")


class FastOTLPSpanExporter(OTLPSpanExporter):
    """``OTLPSpanExporter`` (HTTP/protobuf) that serializes with :func:`encode_spans`, and checks itself.

    Everything else is the parent's: endpoint, headers, compression, session and TLS,
    timeout, retries with backoff, the request-size limit and the exporter's own metrics.
    ``OTLPSpanExporter.export`` serializes inline, so this ``export`` is the parent's
    (opentelemetry-exporter-otlp-proto-http 1.45) with the serialization call replaced;
    if the parent's internals it relies on are missing (another version), it defers to
    the parent's ``export``, official encoder included.

    The fast encoder is trusted only once it has proven itself in this process: the first
    spans of the first batch (``CHECK_SPANS``) and :func:`probe_spans` are encoded with both
    encoders and the bytes compared. If they differ, or if the fast encoder ever raises, the batch is sent as the
    official encoder makes it and the fast path stays off in this process; one warning
    says so. ``AGENSIUM_FAST_ENCODER=false`` uses the plain ``OTLPSpanExporter`` instead.
    """

    # None: not checked yet; True: proven; False: off (differed or failed)
    fast: bool | None = None

    def _fall_back(self, reason: str) -> None:
        type(self).fast = False
        _log.warning("otel-agensium: fast OTLP span encoder %s; using the official encoder from now on", reason)

    def _check(self, spans: Sequence[ReadableSpan]) -> bytes:
        sample = list(spans[:CHECK_SPANS])
        try:
            probe = probe_spans()
            same = encode_spans(sample) == official_encode(sample) and encode_spans(probe) == official_encode(probe)
        except Exception as error:  # noqa: BLE001 - a bug of ours: the official bytes go out
            self._fall_back(f"failed on its first batch ({type(error).__name__}: {error})")
            return official_encode(spans)
        if not same:
            self._fall_back("wrote bytes that differ from the official encoder's")
            return official_encode(spans)
        type(self).fast = True
        return self.serialize(spans)

    def serialize(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The request body for ``spans``; raises only what the official encoder raises."""
        fast = type(self).fast
        if fast is None:
            return self._check(spans)
        if fast:
            try:
                return encode_spans(spans)
            except Exception as error:  # noqa: BLE001 - retry the batch with the official encoder
                self._fall_back(f"failed ({type(error).__name__}: {error})")
        return official_encode(spans)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # The parent's internals (1.45), untyped here; any missing: the parent's own export.
        client: Any = getattr(self, "_client", None)
        metrics: Any = getattr(self, "_metrics", None)
        max_size: Any = getattr(self, "_max_request_size", None)
        shutdown = getattr(self, "_shutdown", None)
        if None in (client, metrics, max_size, shutdown, _is_request_too_large):
            return super().export(spans)
        if shutdown:
            _exporter_logger.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE

        with metrics.export_operation(len(spans)) as result:
            try:
                serialized_data = self.serialize(spans)
            except Exception as error:  # noqa: BLE001 - as the parent: a bad batch fails, nothing raises
                _exporter_logger.error("Failed to encode span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE

            if _is_request_too_large(serialized_data, max_size):
                _exporter_logger.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                    len(serialized_data),
                    max_size,
                )
                result.error = _RequestPayloadTooLargeError(
                    f"Serialized span request size {len(serialized_data)} "
                    f"bytes exceeds max_request_size "
                    f"{max_size} bytes."
                )
                return SpanExportResult.FAILURE

            export_result = client.export(serialized_data)
            if not export_result.success:
                result.error = export_result.error
                result.error_attrs = (
                    {HTTP_RESPONSE_STATUS_CODE: export_result.status_code}
                    if export_result.status_code is not None
                    else None
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
