"""otel-agensium: OpenTelemetry for FastAPI in front of Celery workers on Redis.

``configure()`` once at start-up, or run the worker under ``opentelemetry-instrument``.

The public API is what :data:`__all__` lists, importable from here; every other module is
internal and may change. ``health_router``, ``HealthChecks``, ``bind`` and
``install_queue_gauges`` are imported on first use, so ``import otel_agensium`` stays cheap
(it runs in every process ``opentelemetry-instrument`` starts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _lazy
from .bootstrap import Handle, configure, current
from .integration import IntegrationError
from .settings import ConfigurationError, Settings
from .version import __version__

if TYPE_CHECKING:
    from .celery.gauges import QueueGauges, install_queue_gauges
    from .health import HealthChecks, health_router
    from .logs import bind

__all__ = [
    "ConfigurationError",
    "Handle",
    "HealthChecks",
    "IntegrationError",
    "QueueGauges",
    "Settings",
    "__version__",
    "bind",
    "configure",
    "current",
    "health_router",
    "install_queue_gauges",
    "instrument_app",
]

# Public names imported on first use: name -> module.
_LAZY = {
    "HealthChecks": ".health",
    "health_router": ".health",
    "bind": ".logs",
    "QueueGauges": ".celery.gauges",
    "install_queue_gauges": ".celery.gauges",
}


def __getattr__(name: str) -> Any:
    return _lazy.load(__name__, _LAZY, name)


def instrument_app(app: Any) -> Any:
    """Instrument a FastAPI app created before ``configure()`` ran; returns the app."""
    handle = current()
    if handle is not None:
        from .web import FastAPIIntegration

        for integration in handle.integrations:
            if isinstance(integration, FastAPIIntegration):
                integration.instrument_app(app)
    return app
