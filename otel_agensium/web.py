"""FastAPI: one server span and one duration histogram per request.

Two implementations, chosen by ``AGENSIUM_HTTP_INSTRUMENTATION``:

``lean`` (default)
    :class:`LeanASGIMiddleware`, wrapped around every FastAPI app's middleware stack.
    One SERVER span named ``"{method} {route}"`` with the stable HTTP semantic
    conventions, W3C context from the request headers, and
    ``http.server.request.duration`` (seconds). Measured in-process, it adds about a
    quarter of what the contrib ASGI middleware adds per request (bench/fastapi_rps.py,
    README "Benchmarks"): the contrib middleware builds ~13 span attributes and records
    four instruments, each with its own attribute set, on every request.
``contrib``
    ``opentelemetry-instrumentation-fastapi`` (without its ASGI send/receive spans).

A FastAPI app mounted in another is measured once, by the outermost app's middleware, under
the whole route template (the mount paths before the sub-app's route).

FastAPI's own native telemetry (``FastAPI(telemetry=...)``) is turned off by default
for apps that do not configure it, so a request never gets two server spans.
Apps created before ``configure()`` are covered as long as they have not served a
request yet (their native telemetry is turned off, unless they configured it, when the
server starts them); otherwise call ``otel_agensium.instrument_app(app)``.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import wrapt
from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from .errors import report
from .integration import Integration

EXCLUDED_SPANS = ["receive", "send"]
# Semantic-convention buckets for http.server.request.duration, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
_NATIVE_OFF = {"tracing": False, "metrics": False, "logs": False}
# FastAPI's native telemetry as ``FastAPI()`` leaves it when not given ``telemetry=`` (0.165).
_NATIVE_DEFAULTS = {
    "tracer_provider": None,
    "meter_provider": None,
    "logger_provider": None,
    "tracing": True,
    "metrics": True,
    "logs": True,
    "operation_spans": True,
    "exclude": None,
}


def _native_off_unless_configured(app: Any) -> None:
    """Turn FastAPI's native telemetry off in an app that left it at its defaults.

    Apps created after ``configure()`` get ``telemetry`` off from the wrapped ``FastAPI.__init__``;
    one created before has native telemetry on. Its middleware stack is built (and wrapped here)
    when the server runs the app's lifespan, before the first request, so no request is served
    with both (uvicorn --lifespan off: the stack is built in the first request, which native
    telemetry already took). An app that configured native telemetry is left alone.
    """
    config = getattr(app, "_telemetry", None)
    if isinstance(config, dict) and all(config.get(key) == value for key, value in _NATIVE_DEFAULTS.items()):
        config.update(_NATIVE_OFF)


class _HeaderGetter(Getter[list[tuple[bytes, bytes]]]):
    """Reads W3C headers straight from the ASGI header list (bytes pairs)."""

    def get(self, carrier: list[tuple[bytes, bytes]], key: str) -> list[str] | None:
        name = key.encode("latin-1")
        values = [value.decode("latin-1") for header, value in carrier if header == name]
        return values or None

    def keys(self, carrier: list[tuple[bytes, bytes]]) -> list[str]:
        return [header.decode("latin-1") for header, _ in carrier]


_GETTER = _HeaderGetter()
_fields: tuple[Any, frozenset[bytes]] | None = None


def _propagation_fields() -> frozenset[bytes]:
    """The header names the global propagator reads (``traceparent``, ``tracestate``, ``baggage``
    by default), as ASGI header names; recomputed when the global propagator changes."""
    global _fields
    propagator = propagate.get_global_textmap()
    if _fields is None or _fields[0] is not propagator:
        try:
            names = frozenset(name.lower().encode("latin-1") for name in propagator.fields)
        except Exception:  # noqa: BLE001 - a propagator that cannot say: extract from every request
            names = _ANY_HEADER
        _fields = (propagator, names)
    return _fields[1]


class _AnyHeader(frozenset):
    def __contains__(self, item: object) -> bool:
        return True


_ANY_HEADER = _AnyHeader()


async def _flush_at_shutdown(app: Any, scope: dict, receive: Any, send: Any) -> None:
    """The lifespan scope, with the final flush before the app reports its shutdown complete.

    uvicorn ends a SIGTERM'd server by raising the signal again once the app has shut down:
    the process dies of it and no ``atexit`` handler (the SDK's or ours) ever runs. So the
    flush happens here, in a thread (the event loop stays free), bounded by
    ``AGENSIUM_SHUTDOWN_TIMEOUT``.
    """

    async def send_after_flush(message: dict) -> None:
        if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            from .bootstrap import current

            handle = current()
            if handle is not None:
                await asyncio.get_running_loop().run_in_executor(None, handle.final_flush)
        await send(message)

    await app(scope, receive, send_after_flush)


def _call_with_flush_at_shutdown(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    """``FastAPI.__call__`` (either instrumentation): lifespan scopes get the final flush."""
    if args and isinstance(args[0], dict) and args[0].get("type") == "lifespan":
        return _flush_at_shutdown(wrapped, *args, **kwargs)
    return wrapped(*args, **kwargs)


# Set in the ASGI scope by the outermost LeanASGIMiddleware of a request: (its app, the root_path then).
_MEASURED = "otel_agensium.measured"
_mounts: dict[tuple[int, int], list[tuple[str, re.Pattern[str]]]] = {}


def _mount_path(outer: Any, inner: Any, prefix: str) -> str:
    """The path template under which ``inner`` is mounted in ``outer`` (``/v1``, ``/users/{uid}``,
    through nested mounts) that matches ``prefix``, the concrete path the mounts consumed; "" when
    none does. The candidates are found once per pair (the route table is fixed once serving)."""
    key = (id(outer), id(inner))
    candidates = _mounts.get(key)
    if candidates is None:
        candidates = [(template, _template_regex(template)) for template in _find_mounts(outer, inner, 4)]
        if len(_mounts) < 256:
            _mounts[key] = candidates
    return next((template for template, pattern in candidates if pattern.fullmatch(prefix)), "")


_PARAM = re.compile(r"\{[^}]*\}")


def _template_regex(template: str) -> re.Pattern[str]:
    """``/tenants/{tenant_id}`` -> a pattern that matches ``/tenants/acme``."""
    return re.compile("[^/]+".join(re.escape(part) for part in _PARAM.split(template)))


def _find_mounts(app: Any, inner: Any, depth: int) -> list[str]:
    """Every chain of Mount paths from ``app`` down to ``inner``, at most ``depth`` mounts deep."""
    if depth <= 0:
        return []
    found = []
    for route in getattr(app, "routes", None) or ():
        mounted = getattr(route, "app", None)
        path = getattr(route, "path", None)
        if mounted is None or path is None or not hasattr(route, "routes"):
            continue  # not a Mount
        if mounted is inner:
            found.append(path)
        found.extend(path + below for below in _find_mounts(mounted, inner, depth - 1))
    return found


class LeanASGIMiddleware:
    def __init__(self, app: Any, tracer: trace.Tracer | None, duration: Any, excluded: Any = None) -> None:
        self.app = app
        self.tracer = tracer
        self.duration = duration
        self.excluded = excluded
        self._attrs: dict[tuple[str, str, int, str], dict[str, Any]] = {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or _MEASURED in scope  # a FastAPI app mounted in one already measured: its request is the outer one's
            or (self.excluded is not None and self.excluded.url_disabled(scope["path"]))
        ):
            if scope["type"] == "lifespan":
                await _flush_at_shutdown(self.app, scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        scope[_MEASURED] = (scope.get("app"), scope.get("root_path", ""))
        method = scope.get("method", "_OTHER")
        span = token = None
        if self.tracer is not None:
            headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
            # Only a request that carries one of the propagator's fields can have a parent.
            fields = _propagation_fields()
            parent = (
                propagate.extract(headers, getter=_GETTER)
                if any(name in fields for name, _ in headers)
                else context.Context()
            )
            span = self.tracer.start_span(
                method,
                context=parent,
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": method,
                    "url.scheme": scope.get("scheme", "http"),
                    "url.path": scope.get("path", ""),
                    "network.protocol.version": scope.get("http_version", "1.1"),
                },
            )
            token = context.attach(trace.set_span_in_context(span, parent))
        status = [500]

        async def send_and_note_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note_status)
        except BaseException as exc:
            if span is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            self._finish(scope, method, status[0], span, time.perf_counter() - started)
            if token is not None:
                context.detach(token)

    def _finish(self, scope: dict, method: str, code: int, span: Any, seconds: float) -> None:
        try:
            route = getattr(scope.get("route"), "path", None) or ""
            outer, root_path = scope.get(_MEASURED) or (None, "")
            now = scope.get("root_path", "")
            if route and now != root_path and now.startswith(root_path):  # served by an app mounted in ours
                route = _mount_path(outer, scope.get("app"), now[len(root_path) :]) + route
            if span is not None:
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attributes({"http.route": route, "http.response.status_code": code})
                else:
                    span.set_attribute("http.response.status_code", code)
                if code >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                span.end()
            if self.duration is not None:
                scheme = scope.get("scheme", "http")
                key = (method, route, code, scheme)
                attrs = self._attrs.get(key)
                if attrs is None:
                    attrs = {
                        "http.request.method": method,
                        "http.route": route,
                        "http.response.status_code": code,
                        "url.scheme": scheme,
                    }
                    if len(self._attrs) < 2000:  # bounded: routes are templates, not raw paths
                        self._attrs[key] = attrs
                self.duration.record(seconds, attrs)
        except Exception:  # noqa: BLE001 - telemetry never fails a request
            report("web.LeanASGIMiddleware._finish")


class FastAPIIntegration(Integration):
    name = "web"

    def __init__(self, tracer_provider: Any, meter_provider: Any, mode: str = "lean") -> None:
        super().__init__()
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.mode = mode
        self._tracer: Any = None
        self._duration: Any = None
        self._excluded: Any = None

    # -- contrib ---------------------------------------------------------------------
    def _contrib_kwargs(self) -> dict[str, Any]:
        from opentelemetry.metrics import NoOpMeterProvider
        from opentelemetry.trace import NoOpTracerProvider

        return {
            "tracer_provider": self.tracer_provider or NoOpTracerProvider(),
            "meter_provider": self.meter_provider or NoOpMeterProvider(),
            "exclude_spans": EXCLUDED_SPANS,
        }

    # -- lean ------------------------------------------------------------------------
    def _wrap_stack(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        _native_off_unless_configured(instance)  # an app created before configure(): FastAPI.__init__ ran unwrapped
        return LeanASGIMiddleware(wrapped(*args, **kwargs), self._tracer, self._duration, self._excluded)

    @staticmethod
    def _native_off(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        if kwargs.get("telemetry") is None:
            kwargs["telemetry"] = dict(_NATIVE_OFF)
        return wrapped(*args, **kwargs)

    def setup(self) -> None:
        import fastapi

        # The final flush runs at the lifespan's shutdown (uvicorn exits without atexit): in
        # LeanASGIMiddleware (the middleware stack sees the lifespan scope too), with contrib
        # around FastAPI.__call__ (a wrapper every request would pass through in lean mode).
        if self.mode == "contrib":
            wrapt.wrap_function_wrapper("fastapi", "FastAPI.__call__", _call_with_flush_at_shutdown)
            self.on_uninstall(lambda: unwrap(fastapi.FastAPI, "__call__"), "unwrap FastAPI.__call__")
            from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

            instrumentor = FastAPIInstrumentor()
            instrumentor.instrument(**self._contrib_kwargs())
            self.on_uninstall(instrumentor.uninstrument, "FastAPIInstrumentor.uninstrument")
            return
        from opentelemetry.util.http import get_excluded_urls

        from .histograms import create_histogram
        from .version import __version__

        if self.tracer_provider is not None:
            self._tracer = self.tracer_provider.get_tracer("otel_agensium.web", __version__)
        if self.meter_provider is not None:
            self._duration = create_histogram(
                self.meter_provider,
                self.meter_provider.get_meter("otel_agensium.web", __version__),
                ("otel_agensium.web", __version__),
                "http.server.request.duration",
                "s",
                "Duration of HTTP server requests.",
                DURATION_BUCKETS,
            )
        self._excluded = get_excluded_urls("FASTAPI")
        wrapt.wrap_function_wrapper("fastapi", "FastAPI.build_middleware_stack", self._wrap_stack)
        self.on_uninstall(lambda: unwrap(fastapi.FastAPI, "build_middleware_stack"), "unwrap build_middleware_stack")
        if hasattr(fastapi, "telemetry"):  # FastAPI versions with native OpenTelemetry support
            wrapt.wrap_function_wrapper("fastapi", "FastAPI.__init__", self._native_off)
            self.on_uninstall(lambda: unwrap(fastapi.FastAPI, "__init__"), "unwrap FastAPI.__init__")

    def instrument_app(self, app: Any) -> None:
        if self.mode == "contrib":
            from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

            if not getattr(app, "_is_instrumented_by_opentelemetry", False):
                FastAPIInstrumentor.instrument_app(app, **self._contrib_kwargs())
            return
        telemetry = getattr(app, "_telemetry", None)
        if isinstance(telemetry, dict):
            telemetry.update(_NATIVE_OFF)
        stack = getattr(app, "middleware_stack", None)
        if stack is not None and not isinstance(stack, LeanASGIMiddleware):
            app.middleware_stack = LeanASGIMiddleware(stack, self._tracer, self._duration, self._excluded)
