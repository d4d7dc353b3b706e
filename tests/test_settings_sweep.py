"""Drill: an automated sweep of invalid settings.

For each bad value: `otel-agensium check` prints one line naming the setting and what it accepts
and exits 1; configure() given the value as an argument raises ConfigurationError with that
line; an app started with it in the environment keeps running on the default and says so in one
warning line; in strict mode a bad AGENSIUM_* value stops start-up in one line. Never a traceback.
"""

from __future__ import annotations

import subprocess

import pytest

import otel_agensium
from otel_agensium import settings
from tests.procs import BIN, ROOT, refusing_endpoint, run_cli

BAD: list[tuple[str, str]] = [
    ("OTEL_SDK_DISABLED", "maybe"),
    ("OTEL_SDK_DISABLED", "2"),
    ("OTEL_SERVICE_NAME", "two\nlines"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:99999"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http//collector:4318"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "udp"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "=x"),
    ("OTEL_TRACES_SAMPLER", "sometimes"),
    ("OTEL_TRACES_SAMPLER", "always"),
    ("OTEL_TRACES_SAMPLER", "ratio"),
    ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
    ("OTEL_TRACES_SAMPLER_ARG", "-0.1"),
    ("OTEL_TRACES_SAMPLER_ARG", "half"),
    ("OTEL_TRACES_SAMPLER_ARG", "nan"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "-1"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "abc"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "1.5"),
    ("AGENSIUM_TRACES", "maybe"),
    ("AGENSIUM_METRICS", "2"),
    ("AGENSIUM_LOGS", "TRUEE"),
    ("AGENSIUM_OTLP", "on!"),
    ("AGENSIUM_LOG_STDOUT", "y e s"),
    ("AGENSIUM_RECORD_TASK_ARGS", "sometimes"),
    ("AGENSIUM_PROMETHEUS_PORT", "-1"),
    ("AGENSIUM_PROMETHEUS_PORT", "65536"),
    ("AGENSIUM_PROMETHEUS_PORT", "http"),
    ("AGENSIUM_PROMETHEUS_PORT", "80.5"),
    ("AGENSIUM_MAX_TASK_NAMES", "0"),
    ("AGENSIUM_MAX_TASK_NAMES", "-5"),
    ("AGENSIUM_MAX_TASK_NAMES", "many"),
    ("AGENSIUM_MAX_TASK_NAMES", "1000001"),
    ("AGENSIUM_QUEUES", ","),
    ("AGENSIUM_QUEUES", " , "),
    ("AGENSIUM_REDIS_URL", "localhost:6379"),
    ("AGENSIUM_REDIS_URL", "http://redis:6379"),
    ("AGENSIUM_REDIS_URL", "redis://"),
    ("AGENSIUM_REDIS_URL", "redis://127.0.0.1:6379/abc"),
    ("AGENSIUM_BROKER_URL", "rediss://redis:6380/0x1"),
    ("AGENSIUM_HEALTH_TIMEOUT", "0"),
    ("AGENSIUM_HEALTH_TIMEOUT", "-1"),
    ("AGENSIUM_HEALTH_TIMEOUT", "forever"),
    ("AGENSIUM_HEALTH_TIMEOUT", "301"),
    ("AGENSIUM_LOG_LEVEL", "LOUD"),
    ("AGENSIUM_LOG_LEVEL", "5"),
    ("AGENSIUM_LOG_FILE", "/etc/hostname/app.log"),
    ("AGENSIUM_LOG_FILE", "/"),
    ("AGENSIUM_LOG_FILE_MAX_BYTES", "10"),
    ("AGENSIUM_LOG_FILE_MAX_BYTES", "1MB"),
    ("AGENSIUM_LOG_FILE_BACKUPS", "-1"),
    ("AGENSIUM_LOG_FILE_BACKUPS", "lots"),
    ("AGENSIUM_ENVIRONMENT", "prod\nstaging"),
    ("AGENSIUM_STRICT", "very"),
    ("AGENSIUM_PROMETHEUS_HOST", "a\nb"),
    ("OTEL_BSP_SCHEDULE_DELAY", "abc"),
    ("OTEL_BSP_MAX_QUEUE_SIZE", "-5"),
    ("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "0"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "abc"),
    ("OTEL_EXPORTER_OTLP_COMPRESSION", "zip"),
]
BY_ENV = {s.env: s for s in settings.SETTINGS}


def test_sweep_has_at_least_50_values_over_every_kind_of_setting():
    assert len(BAD) >= 50
    assert len({env for env, _ in BAD}) >= 24


@pytest.mark.parametrize("env,value", BAD, ids=[f"{e}={v!r}" for e, v in BAD])
def test_bad_value_is_one_clear_line_everywhere(env, value):
    setting = BY_ENV[env]
    # the environment: one problem line, the default used
    loaded = settings.load(environ={env: value})
    assert len(loaded.problems) == 1
    line = loaded.problems[0]
    assert line.startswith(f"{env}=") and " is invalid: expected " in line and "; using default " in line
    assert getattr(loaded, setting.name) == setting.default
    # configure(name=value): one exception type carrying the same explanation, nothing set up
    with pytest.raises(otel_agensium.ConfigurationError) as info:
        otel_agensium.configure(**{setting.name: value})
    assert env in str(info.value) and "expected" in str(info.value)
    assert otel_agensium.current() is None or otel_agensium.current().settings.values != loaded.values
    # the command: one line, exit 1, no traceback
    result = run_cli("check", env={env: value})
    assert result.returncode == 1
    assert result.stdout.strip().splitlines() == [line]
    assert "Traceback" not in result.stdout + result.stderr
    if setting.secret:
        assert value not in result.stdout or value in ("redis://",)


APP = "import otel_agensium; h = otel_agensium.configure(); print('app running, telemetry', h.enabled)"


@pytest.mark.parametrize("env,value", BAD[::6], ids=[f"{e}={v!r}" for e, v in BAD[::6]])
def test_app_started_with_bad_value_runs_on_default_with_one_warning(env, value):
    result = subprocess.run(
        [str(BIN / "python"), "-c", APP],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(BIN), env: value, "AGENSIUM_OTLP": "false", "AGENSIUM_LOGS": "false"},
    )
    assert result.returncode == 0, result.stderr
    assert "app running, telemetry True" in result.stdout
    warnings = [x for x in result.stderr.splitlines() if env in x]
    assert len(warnings) == 1 and "using default" in warnings[0], result.stderr
    assert "Traceback" not in result.stderr


def test_strict_mode_refuses_to_start_in_one_line():
    result = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "-c", "print('app ran')"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": str(BIN),
            "AGENSIUM_STRICT": "true",
            "AGENSIUM_MAX_TASK_NAMES": "many",
            "OTEL_PYTHON_DISTRO": "agensium",
            "OTEL_PYTHON_CONFIGURATOR": "agensium",
            "AGENSIUM_OTLP": "false",
        },
    )
    assert result.returncode == 2
    assert "app ran" not in result.stdout
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "AGENSIUM_MAX_TASK_NAMES" in lines[0], result.stderr
    assert lines[0].endswith("not starting (AGENSIUM_STRICT=true)") and "using default" not in lines[0]


def _one_span_app(then: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """An app that configures, ends one span and runs ``then`` (``h`` is the handle), exporting to a
    port nobody listens on, with ``env`` and nothing else of this environment."""
    code = (
        "import otel_agensium; from opentelemetry import trace; h = otel_agensium.configure(); "
        f"trace.get_tracer('t').start_span('s').end(); {then}"
    )
    return subprocess.run(
        [str(BIN / "python"), "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(BIN), "OTEL_EXPORTER_OTLP_ENDPOINT": refusing_endpoint(), **env},
    )


def test_sdk_read_variables_give_our_one_line_not_the_sdk_traceback():
    """The batch-processor and exporter variables are validated here and passed to the SDK explicitly."""
    bad = {
        "OTEL_BSP_SCHEDULE_DELAY": "abc",
        "OTEL_BLRP_MAX_QUEUE_SIZE": "lots",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "abc",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "zip",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "99999",
    }
    result = _one_span_app(
        "print('app running, telemetry', h.enabled); h.shutdown()", {"OTEL_EXPORTER_OTLP_TIMEOUT": "1", **bad}
    )
    assert result.returncode == 0, result.stderr
    assert "app running, telemetry True" in result.stdout
    assert "Traceback" not in result.stderr
    for env in (
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BLRP_MAX_QUEUE_SIZE",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ):
        assert len([x for x in result.stderr.splitlines() if env in x]) == 1, (env, result.stderr)
    # a batch size larger than the queue is clamped, not a failed start-up
    assert "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" not in result.stderr


def test_bad_sampler_is_said_once_also_when_spans_are_exported():
    """The fast encoder's first-batch check builds spans of its own: it must not read (and warn about)
    the app's sampler a second time."""
    result = _one_span_app(
        "h.force_flush(5000); print('exported')",
        {"OTEL_TRACES_SAMPLER": "sometimes", "AGENSIUM_LOGS": "false", "AGENSIUM_SHUTDOWN_TIMEOUT": "1"},
    )
    assert "exported" in result.stdout, result.stderr
    said = [x for x in (result.stdout + result.stderr).splitlines() if "sometimes" in x or "sampler" in x.lower()]
    assert len(said) == 1 and "OTEL_TRACES_SAMPLER='sometimes' is invalid" in said[0], result.stderr
