"""Every setting otel-agensium reads: its environment variable, default and validation.

Standard ``OTEL_*`` variables keep the meaning the OpenTelemetry specification gives
them; the project's own settings all start with ``AGENSIUM_``.

A bad value never raises from deep inside the SDK:

* from the environment, it is reported in one warning line that names the variable
  and what it accepts, and the default is used instead (the OTel specification's
  rule); with ``AGENSIUM_STRICT=true`` a bad ``AGENSIUM_*`` value stops start-up;
* as an explicit argument to :func:`otel_agensium.configure`, it raises
  :class:`ConfigurationError` carrying the same line;
* ``otel-agensium check`` prints one line per bad setting and exits non-zero.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PREFIX = "AGENSIUM_"

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
PROTOCOLS = ("http/protobuf", "grpc")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_QUEUES = ("celery", "profile", "clean", "master")


class ConfigurationError(ValueError):
    """A setting has a value otel-agensium cannot use; the message names it and what it accepts."""


# --- parsers: each takes the raw value (a string from the environment, or a Python
# value from configure()) and returns the parsed value or raises ValueError with the
# accepted values. -----------------------------------------------------------------


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("true or false")


def _int_range(low: int, high: int | None = None) -> Callable[[Any], int]:
    accepted = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(accepted)
        try:
            number = int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise ValueError(accepted) from None
        if number < low or (high is not None and number > high):
            raise ValueError(accepted)
        return number

    return parse


def _float_range(low: float, high: float, *, above_low: bool = False, accepted: str = "") -> Callable[[Any], float]:
    """A number from ``low`` to ``high`` (``above_low``: strictly greater than ``low``)."""
    if not accepted:
        accepted = f"a number > {low:g} and <= {high:g}" if above_low else f"a number from {low:g} to {high:g}"

    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(accepted)
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ValueError(accepted) from None
        if number != number or not low <= number <= high or (above_low and number == low):
            raise ValueError(accepted)
        return number

    return parse


_positive_seconds = _float_range(0, 300, above_low=True, accepted="a number of seconds > 0 and <= 300")


def _choice(*choices: str, lower: bool = True) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip()
        text = text.lower() if lower else text.upper()
        if text not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return text

    return parse


def _url(*schemes: str) -> Callable[[Any], str]:
    accepted = "a URL starting with " + " or ".join(f"{s}://" for s in schemes)

    def parse(value: Any) -> str:
        text = str(value).strip()
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(accepted) from None
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(accepted)
        return text.rstrip("/")

    return parse


def _optional_url(*schemes: str) -> Callable[[Any], str | None]:
    parse_url = _url(*schemes)

    def parse(value: Any) -> str | None:
        if value is None or str(value).strip() == "":
            return None
        return parse_url(value)

    return parse


def _protocol(value: Any) -> str:
    protocol = _choice(*PROTOCOLS)(value)
    if protocol == "grpc":
        import importlib.util

        if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is None:
            raise ValueError("http/protobuf, or grpc once opentelemetry-exporter-otlp-proto-grpc is installed")
    return protocol


def _text(value: Any) -> str:
    text = str(value).strip()
    if not text or "\n" in text:
        raise ValueError("a non-empty single-line string")
    return text


def _headers(value: Any) -> dict[str, str]:
    accepted = "comma-separated key=value pairs"
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    headers: dict[str, str] = {}
    for pair in str(value).split(","):
        if not pair.strip():
            continue
        key, sep, val = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(accepted)
        headers[key.strip()] = val.strip()
    return headers


def _names(value: Any) -> tuple[str, ...]:
    accepted = "a comma-separated list of queue names"
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = tuple(str(item).strip() for item in items if str(item).strip())
    if not names or any(not n.isprintable() or len(n) > 200 for n in names):
        raise ValueError(accepted)
    return names


def _log_path(value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    path = Path(str(value).strip())
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError("a writable file path (this is a directory)")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise ValueError("a file path in a writable directory")
    return str(path)


@dataclass(frozen=True)
class Setting:
    name: str  # the keyword argument of configure()
    env: str  # the environment variable
    default: Any
    parse: Callable[[Any], Any]
    doc: str
    secret: bool = False


def _own(name: str, default: Any, parse: Callable[[Any], Any], doc: str) -> Setting:
    return Setting(name, PREFIX + name.upper(), default, parse, doc)


SETTINGS: tuple[Setting, ...] = (
    # -- standard OpenTelemetry variables -------------------------------------------
    Setting("sdk_disabled", "OTEL_SDK_DISABLED", False, _bool, "Turn all telemetry off."),
    Setting("service_name", "OTEL_SERVICE_NAME", "unknown_service", _text, "service.name of the resource."),
    Setting(
        "endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318",
        _url("http", "https"), "OTLP endpoint (base URL; /v1/traces etc. are added for HTTP).",
    ),
    Setting(
        "protocol", "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", _protocol,
        "OTLP protocol. HTTP is the default because the gRPC channel is not fork-safe.",
    ),
    Setting(
        "headers", "OTEL_EXPORTER_OTLP_HEADERS", {}, _headers,
        "Headers sent with every OTLP export (e.g. auth tokens); never logged.", secret=True,
    ),
    Setting("sampler", "OTEL_TRACES_SAMPLER", "parentbased_always_on", _choice(*SAMPLERS), "Trace sampler."),
    Setting("sampler_arg", "OTEL_TRACES_SAMPLER_ARG", 1.0, _float_range(0.0, 1.0), "Ratio for *traceidratio."),
    Setting(
        "metric_export_interval", "OTEL_METRIC_EXPORT_INTERVAL", 60000, _int_range(100, 86_400_000),
        "Milliseconds between metric exports.",
    ),
    Setting(
        "export_timeout", "OTEL_EXPORTER_OTLP_TIMEOUT", 10.0,
        _float_range(0, 300, above_low=True, accepted="seconds > 0 and <= 300 (the Python SDK reads it in seconds)"),
        "Seconds one OTLP export request may take.",
    ),
    Setting("compression", "OTEL_EXPORTER_OTLP_COMPRESSION", "none", _choice("none", "gzip", "deflate"),
            "Compression of OTLP/HTTP requests."),
    Setting("bsp_schedule_delay", "OTEL_BSP_SCHEDULE_DELAY", 5000, _int_range(1, 3_600_000),
            "Milliseconds between span exports."),
    Setting("bsp_max_queue_size", "OTEL_BSP_MAX_QUEUE_SIZE", 2048, _int_range(1, 1_000_000),
            "Spans buffered for export; more are dropped (and counted), never block the app."),
    Setting("bsp_max_export_batch_size", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, _int_range(1, 1_000_000),
            "Spans per export request (at most the queue size)."),
    Setting("blrp_schedule_delay", "OTEL_BLRP_SCHEDULE_DELAY", 1000, _int_range(1, 3_600_000),
            "Milliseconds between log record exports."),
    Setting("blrp_max_queue_size", "OTEL_BLRP_MAX_QUEUE_SIZE", 2048, _int_range(1, 1_000_000),
            "Log records buffered for export; more are dropped (and counted)."),
    Setting("blrp_max_export_batch_size", "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", 512, _int_range(1, 1_000_000),
            "Log records per export request (at most the queue size)."),
    # -- otel-agensium's own -------------------------------------------------------
    _own("service_version", "unknown", _text, "service.version of the resource."),
    _own("environment", "development", _text, "deployment.environment.name of the resource."),
    _own("traces", True, _bool, "Export traces."),
    _own("metrics", True, _bool, "Export metrics."),
    _own("logs", True, _bool, "Install the JSON log handler and export log records over OTLP."),
    _own("otlp", True, _bool, "Send telemetry over OTLP (off: Prometheus pull endpoint and JSON logs only)."),
    _own("prometheus_port", 0, _int_range(0, 65535), "Serve /metrics on this port (0: off). Single-process apps."),
    _own("prometheus_host", "127.0.0.1", _text, "Address the Prometheus pull endpoint binds to."),
    _own(
        "http_instrumentation", "lean", _choice("lean", "contrib"),
        "FastAPI server spans/metrics: lean (ours, ~4x cheaper) or contrib (opentelemetry-instrumentation-fastapi).",
    ),
    _own(
        "celery_instrumentation", "lean", _choice("lean", "contrib"),
        "Celery publish/run spans: lean (ours, attributes set once) or contrib (opentelemetry-instrumentation-celery).",
    ),
    _own("fast_encoder", True, _bool,
         "Encode OTLP spans with otel-agensium's exact protobuf writer (off: the exporter's own encoder)."),
    _own("max_task_names", 500, _int_range(1, 100_000), "Distinct task_name label values before 'other'."),
    _own("process_metrics", True, _bool, "Export resident memory and CPU time of each Celery worker process."),
    _own("queues", DEFAULT_QUEUES, _names, "Queues whose depth is measured, besides those workers consume."),
    Setting(
        "redis_url", PREFIX + "REDIS_URL", None, _optional_url("redis", "rediss", "unix"),
        "Redis the health router checks (default: the Celery app's broker when it is Redis).", secret=True,
    ),
    _own("health_timeout", 2.0, _positive_seconds, "Seconds each health check may take."),
    _own("health_cache_ttl", 1.0, _float_range(0.0, 60.0), "Seconds a health check result is reused (0: never)."),
    _own("inspect_timeout", 1.0, _positive_seconds, "Seconds workers get to answer an active_queues broadcast."),
    Setting(
        "broker_url", PREFIX + "BROKER_URL", None, _optional_url("redis", "rediss", "amqp", "amqps", "pyamqp"),
        "Broker `otel-agensium monitor` watches when no Celery app (-A) is given.", secret=True,
    ),
    _own("log_level", "INFO", _choice(*LOG_LEVELS, lower=False), "Level of the JSON log handler."),
    _own("log_stdout", True, _bool, "Write JSON log lines to stdout."),
    _own("log_file", None, _log_path, "Also write JSON log lines to this size-rotated file."),
    _own("log_file_max_bytes", 10 * 1024 * 1024, _int_range(1024), "Rotate the log file at this size."),
    _own("log_file_backups", 5, _int_range(0, 1000), "Rotated log files kept."),
    _own("record_task_args", False, _bool, "Record task args/kwargs on spans (may hold personal data)."),
    _own("strict", False, _bool, "Refuse to start on a bad AGENSIUM_* value instead of using its default."),
)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def problem_line(setting: Setting, raw: Any, accepted: str, source: str = "env") -> str:
    shown = "<hidden>" if setting.secret else repr(raw)
    where = setting.env if source == "env" else f"configure({setting.name}=...) / {setting.env}"
    return f"{where}={shown} is invalid: expected {accepted}; using default {setting.default!r}"


@dataclass
class Settings:
    """Resolved settings; ``problems`` holds one line per value that was ignored."""

    values: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


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
    problems: list[str] = []
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
            problems.append(problem_line(setting, raw, str(exc)))
            values[setting.name] = setting.default
    strict = values["strict"]
    own_problems = [p for p in problems if p.startswith(PREFIX)]
    if strict and own_problems and strict_raises:
        raise ConfigurationError(own_problems[0] + " (AGENSIUM_STRICT=true)")
    return Settings(values, problems)


def check(environ: Mapping[str, str] | None = None) -> list[str]:
    """Return one line per bad setting in the environment (empty when all are good)."""
    environ = os.environ if environ is None else environ
    return load(environ=environ, strict_raises=False).problems
