"""Every setting otel-agensium reads: its environment variable, default and validation.

The table is the :class:`Settings` dataclass: one row per setting,
``name: type = _row(env, default, parser, help)``. The row gives the typed attribute of
the resolved settings, the keyword argument of :func:`otel_agensium.configure` (its
signature is this class's), the environment variable (``None``: ``AGENSIUM_<NAME>``), the
line of ``otel-agensium settings`` and the README table. Adding a setting is adding a row.

Standard ``OTEL_*`` variables keep the meaning the OpenTelemetry specification gives
them; the project's own settings all start with ``AGENSIUM_``.

A bad value never raises from deep inside the SDK:

* from the environment, it is reported in one warning line that names the variable
  and what it accepts, and the default is used instead (the OTel specification's
  rule); with ``AGENSIUM_STRICT=true`` a bad ``AGENSIUM_*`` value stops start-up;
* as an explicit argument to :func:`otel_agensium.configure`, it raises
  :class:`ConfigurationError` naming the argument and what it accepts;
* ``otel-agensium check`` prints one line per bad setting and exits non-zero.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ._parsers import (
    PROTOCOLS,
    _bool,
    _choice,
    _float_range,
    _headers,
    _int_range,
    _log_path,
    _names,
    _optional_url,
    _positive_seconds,
    _protocol,
    _text,
    _url,
)

PREFIX = "AGENSIUM_"

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
__all__ = ["BY_NAME", "PROTOCOLS", "SETTINGS", "ConfigurationError", "Setting", "Settings", "check", "load"]


class ConfigurationError(ValueError):
    """A setting has a value otel-agensium cannot use; the message names it and what it accepts."""


def _row(env: str | None, default: Any, parse: Callable[[Any], Any], doc: str, *, secret: bool = False) -> Any:
    """One row of the table: a dataclass field carrying its variable, parser and help text."""
    meta = {"env": env, "parse": parse, "doc": doc, "secret": secret, "default": default}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Resolved settings; ``problems`` holds one line per environment value that was ignored."""

    # -- standard OpenTelemetry variables -------------------------------------------
    sdk_disabled: bool = _row("OTEL_SDK_DISABLED", False, _bool, "Turn all telemetry off.")
    service_name: str = _row("OTEL_SERVICE_NAME", "unknown_service", _text, "service.name of the resource.")
    endpoint: str = _row(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "http://localhost:4318",
        _url("http", "https"),
        "OTLP endpoint (base URL; /v1/traces etc. are added for HTTP).",
    )
    protocol: str = _row(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "http/protobuf",
        _protocol,
        "OTLP protocol. HTTP is the default because the gRPC channel is not fork-safe.",
    )
    headers: dict[str, str] = _row(
        "OTEL_EXPORTER_OTLP_HEADERS",
        {},
        _headers,
        "Headers sent with every OTLP export (e.g. auth tokens); never logged.",
        secret=True,
    )
    sampler: str = _row("OTEL_TRACES_SAMPLER", "parentbased_always_on", _choice(*SAMPLERS), "Trace sampler.")
    sampler_arg: float = _row("OTEL_TRACES_SAMPLER_ARG", 1.0, _float_range(0.0, 1.0), "Ratio for *traceidratio.")
    metric_export_interval: int = _row(
        "OTEL_METRIC_EXPORT_INTERVAL", 60000, _int_range(100, 86_400_000), "Milliseconds between metric exports."
    )
    export_timeout: float = _row(
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        10.0,
        _float_range(0, 300, above_low=True, accepted="seconds > 0 and <= 300 (the Python SDK reads it in seconds)"),
        "Seconds one OTLP export request may take.",
    )
    compression: str = _row(
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "none",
        _choice("none", "gzip", "deflate"),
        "Compression of OTLP/HTTP requests.",
    )
    bsp_schedule_delay: int = _row(
        "OTEL_BSP_SCHEDULE_DELAY", 5000, _int_range(1, 3_600_000), "Milliseconds between span exports."
    )
    bsp_max_queue_size: int = _row(
        "OTEL_BSP_MAX_QUEUE_SIZE",
        2048,
        _int_range(1, 1_000_000),
        "Spans buffered for export; more are dropped (and counted), never block the app.",
    )
    bsp_max_export_batch_size: int = _row(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        512,
        _int_range(1, 1_000_000),
        "Spans per export request (at most the queue size).",
    )
    blrp_schedule_delay: int = _row(
        "OTEL_BLRP_SCHEDULE_DELAY", 1000, _int_range(1, 3_600_000), "Milliseconds between log record exports."
    )
    blrp_max_queue_size: int = _row(
        "OTEL_BLRP_MAX_QUEUE_SIZE",
        2048,
        _int_range(1, 1_000_000),
        "Log records buffered for export; more are dropped (and counted).",
    )
    blrp_max_export_batch_size: int = _row(
        "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE",
        512,
        _int_range(1, 1_000_000),
        "Log records per export request (at most the queue size).",
    )
    # -- otel-agensium's own (env None: AGENSIUM_<NAME>) -----------------------------
    service_version: str = _row(None, "unknown", _text, "service.version of the resource.")
    environment: str = _row(None, "development", _text, "deployment.environment.name of the resource.")
    traces: bool = _row(None, True, _bool, "Export traces.")
    metrics: bool = _row(None, True, _bool, "Export metrics.")
    logs: bool = _row(None, True, _bool, "Install the JSON log handler and export log records over OTLP.")
    otlp: bool = _row(None, True, _bool, "Send telemetry over OTLP (off: Prometheus pull endpoint and JSON logs only).")
    prometheus_port: int = _row(
        None,
        0,
        _int_range(0, 65535),
        "Serve /metrics on this port (0: off). Single-process apps: a prefork worker serves its main "
        "process only (said in a warning line).",
    )
    prometheus_host: str = _row(None, "127.0.0.1", _text, "Address the Prometheus pull endpoint binds to.")
    http_instrumentation: str = _row(
        None,
        "lean",
        _choice("lean", "contrib"),
        "FastAPI server spans/metrics: lean (ours, ~4x cheaper) or contrib (opentelemetry-instrumentation-fastapi).",
    )
    celery_instrumentation: str = _row(
        None,
        "lean",
        _choice("lean", "contrib"),
        "Celery publish/run spans: lean (ours, attributes set once) or contrib (opentelemetry-instrumentation-celery).",
    )
    fast_encoder: bool = _row(
        None,
        True,
        _bool,
        "Encode OTLP spans with otel-agensium's exact protobuf writer (off: the exporter's own encoder).",
    )
    max_task_names: int = _row(None, 500, _int_range(1, 100_000), "Distinct task_name label values before 'other'.")
    process_metrics: bool = _row(
        None, True, _bool, "Export resident memory and CPU time of each Celery worker process."
    )
    queues: tuple[str, ...] = _row(
        None,
        (),
        _names,
        "Queues whose depth is measured, besides those workers consume (unset: the app's own: "
        "task_default_queue, task_queues, task_routes, per-task queue=).",
    )
    redis_url: str | None = _row(
        None,
        None,
        _optional_url("redis", "rediss", "unix"),
        "Redis the health router checks (default: the Celery app's broker when it is Redis).",
        secret=True,
    )
    health_timeout: float = _row(None, 2.0, _positive_seconds, "Seconds each health check may take.")
    health_cache_ttl: float = _row(
        None, 1.0, _float_range(0.0, 60.0), "Seconds a health check result is reused (0: never)."
    )
    inspect_timeout: float = _row(
        None, 1.0, _positive_seconds, "Seconds workers get to answer an active_queues broadcast."
    )
    shutdown_timeout: float = _row(
        None,
        5.0,
        _positive_seconds,
        "Seconds the final flush of spans, metrics and logs may take when a process stops (a worker's "
        "processes share one deadline); what is not sent by then is dropped and counted in one line.",
    )
    broker_url: str | None = _row(
        None,
        None,
        _optional_url("redis", "rediss", "amqp", "amqps", "pyamqp"),
        "Broker `otel-agensium monitor` watches when no Celery app (-A) is given.",
        secret=True,
    )
    log_level: str = _row(None, "INFO", _choice(*LOG_LEVELS, lower=False), "Level of the JSON log handler.")
    log_stdout: bool = _row(None, True, _bool, "Write JSON log lines to stdout.")
    log_file: str | None = _row(None, None, _log_path, "Also write JSON log lines to this size-rotated file.")
    log_file_max_bytes: int = _row(None, 10 * 1024 * 1024, _int_range(1024), "Rotate the log file at this size.")
    log_file_backups: int = _row(None, 5, _int_range(0, 1000), "Rotated log files kept.")
    record_task_args: bool = _row(None, False, _bool, "Record task args/kwargs on spans (may hold personal data).")
    beat_tolerance: float = _row(
        None,
        60.0,
        _float_range(0.0, 86_400.0),
        "Seconds past its due time before `otel-agensium doctor` calls a beat entry (or beat) late.",
    )
    worker_probe_port: int = _row(
        None,
        0,
        _int_range(0, 65535),
        "Celery workers serve /healthz and /readyz on this port, from the main process (0: off).",
    )
    worker_probe_host: str = _row(
        None, "0.0.0.0", _text, "Address the worker probes bind to (the kubelet reaches the pod IP)."
    )
    worker_probe_stall: float = _row(
        None,
        60.0,
        _float_range(1.0, 3600.0),
        "Seconds a connected worker's event loop may not turn before /healthz answers 503.",
    )
    strict: bool = _row(None, False, _bool, "Refuse to start on a bad AGENSIUM_* value instead of using its default.")

    # Not settings: what load() ignored, one line each; whether strict mode refuses any of it.
    problems: tuple[str, ...] = field(default=(), init=False, compare=False)
    refused: bool = field(default=False, init=False, compare=False)

    @property
    def values(self) -> dict[str, Any]:
        """Every setting's value by name."""
        return {s.name: getattr(self, s.name) for s in SETTINGS}


@dataclass(frozen=True)
class Setting:
    """One row of the table, as the CLI, the docs and :func:`load` read it."""

    name: str  # the keyword argument of configure()
    env: str  # the environment variable
    default: Any
    parse: Callable[[Any], Any]
    doc: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(
        f.name,
        f.metadata["env"] or PREFIX + f.name.upper(),
        f.metadata["default"],
        f.metadata["parse"],
        f.metadata["doc"],
        f.metadata["secret"],
    )
    for f in fields(Settings)
    if "parse" in f.metadata
)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def problem_line(setting: Setting, raw: Any, accepted: str, source: str = "env") -> str:
    """``ENV=value is invalid: expected ...; using default ...`` (environment; ``strict``: not starting)
    or the argument's line."""
    shown = "<hidden>" if setting.secret else repr(raw)
    if source == "env":
        return f"{setting.env}={shown} is invalid: expected {accepted}; using default {setting.default!r}"
    if source == "strict":
        return f"{setting.env}={shown} is invalid: expected {accepted}; not starting (AGENSIUM_STRICT=true)"
    return f"configure({setting.name}={shown}) is invalid: expected {accepted} (environment variable {setting.env})"


def load(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    strict_raises: bool = True,
) -> Settings:
    """Resolve every setting: explicit ``overrides`` first, then the environment, then defaults.

    Bad explicit overrides raise :class:`ConfigurationError`. Bad environment values are
    collected in ``Settings.problems`` and replaced by the default; in strict mode a bad
    ``AGENSIUM_*`` value raises instead.
    """
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(BY_NAME))
    if unknown:
        raise ConfigurationError(
            f"configure() got unknown setting(s) {', '.join(unknown)}; accepted: {', '.join(BY_NAME)}"
        )
    values: dict[str, Any] = {}
    problems: list[tuple[str, str | None]] = []  # (the line, its strict-mode wording for AGENSIUM_*)
    for setting in SETTINGS:
        if setting.name in overrides and overrides[setting.name] is not None:
            raw = overrides[setting.name]
            try:
                values[setting.name] = setting.parse(raw)
            except ValueError as exc:
                raise ConfigurationError(problem_line(setting, raw, str(exc), source="arg")) from None
            continue
        raw = environ.get(setting.env)
        if raw is None or (raw.strip() == "" and setting.default is not None):
            values[setting.name] = setting.default
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            refusal = problem_line(setting, raw, str(exc), source="strict") if setting.env.startswith(PREFIX) else None
            problems.append((problem_line(setting, raw, str(exc)), refusal))
            values[setting.name] = setting.default
    refusals = [refusal for _, refusal in problems if refusal is not None]
    if values["strict"] and refusals and strict_raises:
        raise ConfigurationError(refusals[0])
    settings = Settings(**values)
    lines = tuple((refusal or line) if values["strict"] else line for line, refusal in problems)
    object.__setattr__(settings, "problems", lines)  # frozen: set once, here
    object.__setattr__(settings, "refused", bool(values["strict"] and refusals))
    return settings


def check(environ: Mapping[str, str] | None = None) -> tuple[list[str], bool]:
    """One line per bad setting in the environment (empty when all are good), and whether start-up
    would refuse them (``AGENSIUM_STRICT=true`` and a bad ``AGENSIUM_*`` value)."""
    environ = os.environ if environ is None else environ
    settings = load(environ=environ, strict_raises=False)
    return list(settings.problems), settings.refused
