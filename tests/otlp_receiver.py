"""A local OTLP/HTTP receiver: decodes the real protobuf payloads the SDK sends."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class Receiver:
    def __init__(self, port: int = 0, delay: float = 0.0) -> None:
        """``delay``: seconds to wait before answering each request (a slow Collector)."""
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.logs: list[ExportLogsServiceRequest] = []
        self.raw: list[bytes] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if delay:
                    time.sleep(delay)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                kinds = {
                    "/v1/traces": (ExportTraceServiceRequest, receiver.traces),
                    "/v1/metrics": (ExportMetricsServiceRequest, receiver.metrics),
                    "/v1/logs": (ExportLogsServiceRequest, receiver.logs),
                }
                if self.path not in kinds:
                    self.send_response(404)
                    self.end_headers()
                    return
                cls, store = kinds[self.path]
                message = cls()
                message.ParseFromString(body)
                with receiver._lock:
                    store.append(message)
                    receiver.raw.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- views -------------------------------------------------------------------------
    def spans(self) -> list[dict[str, Any]]:
        out = []
        with self._lock:
            requests = list(self.traces)
        for req in requests:
            for rs in req.resource_spans:
                resource = attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.append(
                            {
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "kind": span.kind,
                                "attributes": attrs(span.attributes),
                                "resource": resource,
                                "scope": ss.scope.name,
                                "links": [
                                    {
                                        "trace_id": link.trace_id.hex(),
                                        "span_id": link.span_id.hex(),
                                        "attributes": attrs(link.attributes),
                                    }
                                    for link in span.links
                                ],
                                "status": (span.status.code, span.status.message),
                                "events": [(e.name, attrs(e.attributes)) for e in span.events],
                            }
                        )
        return out

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        with self._lock:
            requests = list(self.logs)
        for req in requests:
            for rl in req.resource_logs:
                resource = attrs(rl.resource.attributes)
                for sl in rl.scope_logs:
                    for rec in sl.log_records:
                        out.append(
                            {
                                "body": _value(rec.body),
                                "trace_id": rec.trace_id.hex(),
                                "span_id": rec.span_id.hex(),
                                "severity": rec.severity_text,
                                "attributes": attrs(rec.attributes),
                                "resource": resource,
                            }
                        )
        return out

    def points(self, name: str) -> dict[tuple, dict[str, Any]]:
        """Latest cumulative point per (service.instance.id, attributes) for metric ``name``."""
        latest: dict[tuple, dict[str, Any]] = {}
        with self._lock:
            requests = list(self.metrics)
        for req in requests:
            for rm in req.resource_metrics:
                resource = attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name != name:
                            continue
                        kind = metric.WhichOneof("data")
                        for dp in getattr(metric, kind).data_points:
                            a = attrs(dp.attributes)
                            key = (resource.get("service.instance.id"), tuple(sorted(a.items())))
                            prev = latest.get(key)
                            if prev is None or dp.time_unix_nano >= prev["time"]:
                                latest[key] = {
                                    "time": dp.time_unix_nano,
                                    "attributes": a,
                                    "resource": resource,
                                    "kind": kind,
                                    "unit": metric.unit,
                                    "dp": dp,
                                }
        return latest

    def totals(self, name: str) -> dict[tuple, float]:
        """Counter or histogram-count totals by attributes, summed across processes."""
        sums: dict[tuple, float] = {}
        for point in self.points(name).values():
            dp = point["dp"]
            value = (
                dp.count
                if point["kind"] == "histogram"
                else (dp.as_double if dp.WhichOneof("value") == "as_double" else dp.as_int)
            )
            key = tuple(sorted(point["attributes"].items()))
            sums[key] = sums.get(key, 0) + value
        return sums


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Poll until ``predicate()`` is truthy; return its value, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")
