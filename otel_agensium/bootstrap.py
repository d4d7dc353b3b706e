"""``configure()``: settings in, providers and integrations up, a handle out."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace

from . import providers
from .settings import Settings, load

_log = logging.getLogger("otel_agensium")
_lock = threading.Lock()
_handle: Handle | None = None


@dataclass
class Handle:
    """What ``configure()`` set up. ``force_flush()`` and ``shutdown()`` are safe to call twice."""

    settings: Settings
    tracer_provider: Any = None
    meter_provider: Any = None
    logger_provider: Any = None
    integrations: list[Any] = field(default_factory=list)
    _shut: bool = False

    @property
    def enabled(self) -> bool:
        return not self.settings.sdk_disabled

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        ok = True
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            if provider is not None:
                try:
                    ok = bool(provider.force_flush(timeout_millis)) and ok
                except Exception:  # noqa: BLE001 - never raise into the app
                    ok = False
        return ok

    def shutdown(self) -> None:
        if self._shut:
            return
        self._shut = True
        self.force_flush()
        for integration in reversed(self.integrations):
            try:
                integration.uninstall()
            except Exception:  # noqa: BLE001
                _log.debug("otel-agensium: uninstall of %r failed", integration, exc_info=True)
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            if provider is not None:
                try:
                    provider.shutdown()
                except Exception:  # noqa: BLE001
                    _log.debug("otel-agensium: provider shutdown failed", exc_info=True)


def current() -> Handle | None:
    """The handle of this process's ``configure()`` call, or None before it."""
    return _handle


def configure(**kwargs: Any) -> Handle:
    """Set up traces, metrics and logs for this process; see the README for every setting.

    Keyword arguments are the settings' names (``service_name=``, ``endpoint=``, ...);
    each falls back to its environment variable, then to its default. A bad argument
    raises :class:`~otel_agensium.ConfigurationError`; a bad environment value is
    reported in one warning line and its default used. Calling it again returns the
    first handle without installing anything twice.
    """
    global _handle
    settings = load(kwargs)
    with _lock:
        if _handle is not None:
            return _handle
        for line in settings.problems:
            _log.warning("otel-agensium: %s", line)
        try:
            _handle = _build(settings)
        except Exception as exc:  # noqa: BLE001 - never take the host down, never half-configured
            _log.warning("otel-agensium: set-up failed (%s: %s); the application runs without telemetry",
                         type(exc).__name__, exc)
            _handle = Handle(load({"sdk_disabled": True}))
        return _handle


def _build(settings: Settings) -> Handle:
    handle = Handle(settings)
    if settings.sdk_disabled:
        return handle
    try:
        _build_into(handle)
    except BaseException:
        handle.shutdown()  # undo what was installed before the failure
        raise
    return handle


def _build_into(handle: Handle) -> None:
    settings = handle.settings
    if settings.otlp:
        providers.quiet_exporter_logs()
    resource = providers.build_resource(settings)
    if settings.traces:
        handle.tracer_provider = providers.build_tracer_provider(settings, resource)
        trace.set_tracer_provider(handle.tracer_provider)
    if settings.metrics:
        readers = [r for r in (providers.prometheus_reader(settings),) if r is not None]
        handle.meter_provider = providers.build_meter_provider(settings, resource, readers)
        metrics.set_meter_provider(handle.meter_provider)
        meter_provider = handle.meter_provider
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=lambda: providers.reset_metric_state_after_fork(meter_provider))
    if settings.logs:
        from . import logs

        handle.logger_provider = logs.install(settings, resource)
        if handle.logger_provider is not None or settings.log_stdout or settings.log_file:
            handle.integrations.append(logs)
    _install_integrations(handle)


def _install_integrations(handle: Handle) -> None:
    settings = handle.settings
    try:
        from .celery import CeleryIntegration
    except ImportError:  # celery not installed: a web app that only publishes elsewhere
        CeleryIntegration = None  # type: ignore[assignment,misc]  # noqa: N806
    if CeleryIntegration is not None:
        integration = CeleryIntegration(
            meter_provider=handle.meter_provider,
            tracer_provider=handle.tracer_provider,
            max_task_names=settings.max_task_names,
            flush=handle.force_flush,
            record_task_args=settings.record_task_args,
            process_metrics=settings.process_metrics,
            instrumentation=settings.celery_instrumentation,
        )
        integration.install()
        handle.integrations.append(integration)
    if handle.tracer_provider is not None:
        from .redis_traffic import RedisIntegration

        redis_integration = RedisIntegration(handle.tracer_provider)
        redis_integration.install()
        handle.integrations.append(redis_integration)
    if handle.tracer_provider is not None or handle.meter_provider is not None:
        from .web import FastAPIIntegration

        web = FastAPIIntegration(handle.tracer_provider, handle.meter_provider, settings.http_instrumentation)
        web.install()
        handle.integrations.append(web)
