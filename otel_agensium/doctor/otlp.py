"""Check ``otlp``: a TCP connect (gRPC) or an empty OTLP/HTTP export to the configured endpoint."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from ..redact import describe
from . import failures
from .context import Context
from .result import FAIL, OK, SKIPPED, WARN, Result

_FIX_PORT = (
    "Point OTEL_EXPORTER_OTLP_ENDPOINT at the Collector's OTLP/HTTP port (4318) as a base URL "
    "without /v1/...; for port 4317 set OTEL_EXPORTER_OTLP_PROTOCOL=grpc."
)


def check_otlp(ctx: Context) -> Result:
    """Raises when the endpoint cannot be reached; :func:`failure` then makes the line."""
    settings = ctx.settings
    if settings.sdk_disabled:
        return Result("otlp", SKIPPED, "OTEL_SDK_DISABLED=true: no telemetry at all")
    if not settings.otlp:
        return Result("otlp", SKIPPED, "AGENSIUM_OTLP=false: nothing is sent over OTLP")
    endpoint = settings.endpoint
    parts = urlsplit(endpoint)
    default_port = {"https": 443, "http": 80}.get(parts.scheme, 4317)
    host, port = parts.hostname or "localhost", parts.port or default_port
    started = time.monotonic()
    if settings.protocol == "grpc":
        with socket.create_connection((host, port), timeout=ctx.timeout):
            pass
        ms = (time.monotonic() - started) * 1000
        return Result(
            "otlp",
            OK,
            f"{endpoint}: TCP connect in {ms:.1f} ms (gRPC; not probed past TCP)",
            data={"endpoint": endpoint},
        )
    url = f"{endpoint}/v1/traces"
    headers = {"Content-Type": "application/x-protobuf", **settings.headers}
    request = urllib.request.Request(url, data=b"", headers=headers, method="POST")  # an empty export
    try:
        with urllib.request.urlopen(request, timeout=ctx.timeout) as response:  # noqa: S310 - http(s) only
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    ms = (time.monotonic() - started) * 1000
    data = {"endpoint": endpoint, "status": status}
    if 200 <= status < 300:
        return Result("otlp", OK, f"POST {url} answered {status} in {ms:.1f} ms", data=data)
    if status in (401, 403):
        return Result(
            "otlp",
            FAIL,
            f"POST {url} answered {status}: the endpoint wants credentials",
            "Set OTEL_EXPORTER_OTLP_HEADERS (e.g. authorization=Bearer <token>) to what the endpoint expects.",
            data=data,
        )
    if status in (404, 405, 415):
        return Result("otlp", FAIL, f"POST {url} answered {status}: not an OTLP/HTTP receiver", _FIX_PORT, data=data)
    return Result(
        "otlp",
        WARN,
        f"POST {url} answered {status}: reachable, but not accepting exports now",
        "Check the Collector's logs (docker compose -f compose.otel.yaml logs collector).",
        data=data,
    )


def failure(ctx: Context, exc: BaseException) -> Result:
    """Refused, timed out, not resolved: one line and the fix."""
    reason = getattr(exc, "reason", exc)  # URLError wraps the socket error
    kind = failures.kind(reason if isinstance(reason, BaseException) else exc)
    endpoint = ctx.settings.endpoint
    return Result(
        "otlp",
        FAIL,
        f"{endpoint}: {failures.what(kind, ctx.timeout)} ({describe(exc, ctx.secrets())})",
        "Start the Collector (docker compose -f compose.otel.yaml up -d collector) or set "
        "OTEL_EXPORTER_OTLP_ENDPOINT to where it listens; until then telemetry is dropped "
        "(the app itself is not affected).",
        data={"endpoint": endpoint, "error": kind},
    )
