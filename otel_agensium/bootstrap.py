"""``configure()``: settings in, providers and integrations up, a handle out."""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec

from opentelemetry import metrics, trace

from . import errors, exporters, fork, providers, shutdown
from .integration import Integration
from .settings import Settings, load

_log = logging.getLogger("otel_agensium")
_lock = threading.Lock()
_handle: Handle | None = None
P = ParamSpec("P")


@dataclass
class Handle:
    """What ``configure()`` set up. ``force_flush()`` and ``shutdown()`` are safe to call twice."""

    settings: Settings
    tracer_provider: Any = None
    meter_provider: Any = None
    logger_provider: Any = None
    integrations: list[Any] = field(default_factory=list)
    _shut: bool = False
    _flushed: bool = False

    @property
    def enabled(self) -> bool:
        return not self.settings.sdk_disabled

    def _providers(self) -> dict[str, Any]:
        named = {"traces": self.tracer_provider, "metrics": self.meter_provider, "logs": self.logger_provider}
        return {name: provider for name, provider in named.items() if provider is not None}

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        """Send what is buffered; False when something was not sent within ``timeout_millis``.

        The three signals flush in parallel and the caller waits no longer than the timeout
        (the SDK's batch processors would wait for every export and retry in turn).
        """
        outcome: dict[str, bool] = {}

        def flush(name: str, provider: Any) -> Callable[[], None]:
            return lambda: outcome.__setitem__(name, bool(provider.force_flush(timeout_millis)))

        jobs = {f"flush-{name}": flush(name, p) for name, p in self._providers().items()}
        late = shutdown.run_until(time.monotonic() + timeout_millis / 1000, jobs)
        return not late and len(outcome) == len(jobs) and all(outcome.values())  # a raise counts as False

    def final_flush(self) -> None:
        """Send what is buffered within ``AGENSIUM_SHUTDOWN_TIMEOUT`` and shut the providers down.

        What cannot be sent by then is dropped and counted in one warning line. Called by
        :meth:`shutdown`, at interpreter exit, and by a Celery worker's processes on their way
        out (``worker_process_shutdown``, ``worker_shutdown``); safe to call twice.
        """
        if self._flushed:
            return
        self._flushed = True
        jobs = {f"shutdown-{name}": p.shutdown for name, p in self._providers().items()}
        if not jobs:
            return
        deadline = shutdown.BUDGET.begin(self.settings.shutdown_timeout)
        late = shutdown.run_until(deadline + shutdown.GRACE_SECONDS, jobs)
        shutdown.BUDGET.finish()
        shutdown.report(self.settings.endpoint, late)

    def shutdown(self) -> None:
        """The final flush (bounded by ``AGENSIUM_SHUTDOWN_TIMEOUT``), then the integrations uninstalled."""
        if self._shut:
            return
        self._shut = True
        self.final_flush()
        for integration in reversed(self.integrations):
            try:
                integration.uninstall()
            except Exception:  # noqa: BLE001
                _log.debug("otel-agensium: uninstall of %r failed", integration, exc_info=True)


def current() -> Handle | None:
    """The handle of this process's ``configure()`` call, or None before it."""
    return _handle


def _takes_settings(settings_class: Callable[P, Any]) -> Callable[[Callable[..., Handle]], Callable[P, Handle]]:
    """Give ``configure`` the keyword-only, typed parameters of the settings table, for editors,
    type checkers and ``help()``; the table stays the one place a setting is declared."""

    def apply(func: Callable[..., Handle]) -> Callable[P, Handle]:
        func.__signature__ = inspect.signature(settings_class).replace(  # type: ignore[attr-defined]
            return_annotation="Handle"
        )
        return func

    return apply


@_takes_settings(Settings)
def configure(**overrides: Any) -> Handle:
    """Set up traces, metrics and logs for this process; see the README for every setting.

    Keyword-only arguments are the settings' names (``service_name=``, ``endpoint=``, ...)
    and their types; each one not given falls back to its environment variable, then to
    its default (the default shown in the signature). A bad argument raises
    :class:`~otel_agensium.ConfigurationError` naming it; a bad environment value is
    reported in one warning line and its default used. Calling it again returns the
    first handle without installing anything twice.
    """
    global _handle
    settings = load(overrides)
    with _lock:
        if _handle is not None:
            _say_ignored(_handle, settings, overrides)
            return _handle
        for line in settings.problems:
            _log.warning("otel-agensium: %s", line)
        try:
            _handle = _build(settings)
        except Exception as exc:  # noqa: BLE001 - never take the host down, never half-configured
            _log.warning(
                "otel-agensium: set-up failed (%s: %s); the application runs without telemetry", type(exc).__name__, exc
            )
            _handle = Handle(load({"sdk_disabled": True}))
        return _handle


_said: set[str] = set()  # what _say_ignored said already in this process (once each)


def _say_ignored(handle: Handle, settings: Settings, overrides: dict[str, Any]) -> None:
    """A later ``configure()`` changes nothing; say so once when it asked for something else."""
    if handle._shut and "shut" not in _said:  # noqa: SLF001
        _said.add("shut")
        _log.warning(
            "otel-agensium: configure() called after shutdown(): telemetry stays off in this process "
            "(it is set up once per process)"
        )
        return
    first, asked = handle.settings.values, settings.values  # each a dict built from every setting: once
    changed = sorted(name for name, value in overrides.items() if value is not None and asked[name] != first[name])
    if changed and "changed" not in _said:
        _said.add("changed")
        _log.warning(
            "otel-agensium: configure() was already called in this process (by opentelemetry-instrument, or "
            "earlier in the app); its settings stay and these arguments are ignored: %s",
            ", ".join(changed),
        )


def _proxy_meter_provider_type() -> type:
    """The API's placeholder meter provider (what ``get_meter_provider()`` returns until one is set)."""
    try:
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # another API version: every provider counts as a placeholder, the SDK says the rest
        return object
    return _ProxyMeterProvider


def _say_if_provider_set(kind: str, current: Any, proxy_type: type) -> bool:
    """True when the app set a global ``kind`` provider before ``configure()``, said in one line."""
    if isinstance(current, proxy_type):
        return False
    _log.warning(
        "otel-agensium: a %s (%s) was set before configure(); OpenTelemetry keeps the first one, so "
        "otel-agensium's telemetry (Celery, Redis, FastAPI) goes through its own provider and exporter while "
        "the app's goes through the one already set, and a trace can end up split between them. Call "
        "configure() first and use the global providers it sets.",
        kind,
        type(current).__name__,
    )
    return True


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
        exporters.quiet_exporter_logs()
    resource = providers.build_resource(settings)
    if settings.traces:
        handle.tracer_provider = providers.build_tracer_provider(settings, resource)
        if not _say_if_provider_set("TracerProvider", trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(handle.tracer_provider)
    if settings.metrics:
        readers = [r for r in (providers.prometheus_reader(settings),) if r is not None]
        handle.meter_provider = providers.build_meter_provider(settings, resource, readers)
        if not _say_if_provider_set("MeterProvider", metrics.get_meter_provider(), _proxy_meter_provider_type()):
            metrics.set_meter_provider(handle.meter_provider)
        meter_provider = handle.meter_provider
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=lambda: fork.reset_metric_state_after_fork(meter_provider))
        _add(handle, _ErrorCounters(meter_provider))
    if settings.logs:
        from .logs import LogsIntegration

        logs = LogsIntegration(settings, resource)
        _add(handle, logs)
        handle.logger_provider = logs.provider
    _install_integrations(handle)
    _take_over_exit(handle)


def _take_over_exit(handle: Handle) -> None:
    """At interpreter exit, one bounded final flush instead of the SDK's three (30 s each, in turn)."""
    for provider in handle._providers().values():  # noqa: SLF001
        atexit.unregister(provider.shutdown)  # bound methods compare equal: removes the SDK's handler
    atexit.register(handle.shutdown)


def _add(handle: Handle, integration: Integration) -> None:
    """Install all of it (or none of it: it undoes itself and raises), then hand it to the handle."""
    integration.install()
    handle.integrations.append(integration)


class _ErrorCounters(Integration):
    """otel_agensium_telemetry_errors_total and otel_agensium_export_failures_total (see errors.py)."""

    name = "error_counters"

    def __init__(self, meter_provider: Any) -> None:
        super().__init__()
        self.meter_provider = meter_provider

    def setup(self) -> None:
        errors.install_metrics(self.meter_provider)
        self.on_uninstall(errors.uninstall_metrics)


def _install_integrations(handle: Handle) -> None:
    settings = handle.settings
    try:
        from .celery import CeleryIntegration
    except ImportError:  # celery not installed: a web app that only publishes elsewhere
        CeleryIntegration = None  # type: ignore[assignment,misc]  # noqa: N806
    if CeleryIntegration is not None:
        _add(
            handle,
            CeleryIntegration(
                meter_provider=handle.meter_provider,
                tracer_provider=handle.tracer_provider,
                max_task_names=settings.max_task_names,
                flush=handle.final_flush,
                record_task_args=settings.record_task_args,
                process_metrics=settings.process_metrics,
                instrumentation=settings.celery_instrumentation,
                prometheus_port=settings.prometheus_port,
            ),
        )
        _install_celery_extras(handle)
    if handle.tracer_provider is not None:
        from .redis_traffic import RedisIntegration

        _add(handle, RedisIntegration(handle.tracer_provider))
    if handle.tracer_provider is not None or handle.meter_provider is not None:
        from .web import FastAPIIntegration

        _add(handle, FastAPIIntegration(handle.tracer_provider, handle.meter_provider, settings.http_instrumentation))


def _install_celery_extras(handle: Handle) -> None:
    """Beat, the worker's ETA gauge, canvas links and the worker probes: each acts only where it applies."""
    from .celery.beat import BeatIntegration

    settings = handle.settings
    _add(handle, BeatIntegration(handle.meter_provider))  # at beat_init, in a process that runs beat
    if handle.meter_provider is not None:
        from .celery.worker_tasks import WorkerTaskGauges

        _add(handle, WorkerTaskGauges(handle.meter_provider))  # at worker_init
    if handle.tracer_provider is not None:
        from .celery.canvas import CanvasIntegration

        celery = next((i for i in handle.integrations if i.name == "celery"), None)
        _add(handle, CanvasIntegration(celery))  # after the tracing instrumentation: its run span is current
    if settings.worker_probe_port:
        from .celery.worker_probe import ProbeIntegration

        _add(
            handle,
            ProbeIntegration(
                settings.worker_probe_host,
                settings.worker_probe_port,
                settings.worker_probe_stall,
                handle.meter_provider,
            ),
        )
