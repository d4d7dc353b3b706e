"""otel-agensium: OpenTelemetry for FastAPI in front of Celery workers on Redis.

``configure()`` once at start-up, or run the worker under ``opentelemetry-instrument``.
"""

from __future__ import annotations

from typing import Any

from .bootstrap import Handle, configure, current
from .settings import ConfigurationError
from .version import __version__

__all__ = ["ConfigurationError", "Handle", "__version__", "configure", "current", "instrument_app"]


def instrument_app(app: Any) -> Any:
    """Instrument a FastAPI app created before ``configure()`` ran; returns the app."""
    handle = current()
    if handle is not None:
        from .web import FastAPIIntegration

        for integration in handle.integrations:
            if isinstance(integration, FastAPIIntegration):
                integration.instrument_app(app)
    return app
