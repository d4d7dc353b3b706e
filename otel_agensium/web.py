"""FastAPI: server spans and HTTP metrics through the contrib instrumentor.

``FastAPIInstrumentor().instrument()`` patches the ``FastAPI`` class, so apps created
after ``configure()`` are instrumented; for an app created before, call
``otel_agensium.instrument_app(app)``. The ASGI ``receive``/``send`` spans (two or
more per request, read by no one) are left out.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

EXCLUDED_SPANS = ["receive", "send"]


class FastAPIIntegration:
    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self._instrumentor = FastAPIInstrumentor()

    def _providers(self) -> dict[str, Any]:
        from opentelemetry.metrics import NoOpMeterProvider
        from opentelemetry.trace import NoOpTracerProvider

        return {
            "tracer_provider": self.tracer_provider or NoOpTracerProvider(),
            "meter_provider": self.meter_provider or NoOpMeterProvider(),
            "exclude_spans": EXCLUDED_SPANS,
        }

    def install(self) -> None:
        self._instrumentor.instrument(**self._providers())

    def instrument_app(self, app: Any) -> None:
        if not getattr(app, "_is_instrumented_by_opentelemetry", False):
            FastAPIInstrumentor.instrument_app(app, **self._providers())

    def uninstall(self) -> None:
        self._instrumentor.uninstrument()
