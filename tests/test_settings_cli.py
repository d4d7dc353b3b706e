"""Settings: `otel-agensium check`, bad values in the environment and as configure() arguments, the demo."""

from __future__ import annotations

import pytest

import otel_agensium
from otel_agensium import settings
from tests.procs import ROOT, run_cli


def test_check_passes_on_defaults():
    result = run_cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok:")


def test_check_names_each_bad_setting_in_one_line():
    result = run_cli("check", env={"OTEL_TRACES_SAMPLER": "sometimes", "AGENSIUM_MAX_TASK_NAMES": "-3"})
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("OTEL_TRACES_SAMPLER='sometimes' is invalid: expected one of always_on,")
    assert lines[1].startswith("AGENSIUM_MAX_TASK_NAMES='-3' is invalid: expected an integer from 1 to 100000")
    assert "Traceback" not in result.stdout + result.stderr


def test_secret_values_are_not_echoed():
    result = run_cli("check", env={"OTEL_EXPORTER_OTLP_HEADERS": "authorization"})
    assert result.returncode == 1
    assert "authorization" not in result.stdout
    assert "<hidden>" in result.stdout


def test_configure_argument_error_is_one_exception_type():
    with pytest.raises(otel_agensium.ConfigurationError) as info:
        otel_agensium.configure(sampler="sometimes")
    assert "OTEL_TRACES_SAMPLER" in str(info.value) and "one of always_on" in str(info.value)
    with pytest.raises(otel_agensium.ConfigurationError, match="unknown setting"):
        otel_agensium.configure(no_such_setting=1)


def test_strict_mode_refuses_bad_own_settings():
    with pytest.raises(settings.ConfigurationError, match="AGENSIUM_METRICS"):
        settings.load(environ={"AGENSIUM_STRICT": "true", "AGENSIUM_METRICS": "maybe"})
    # Standard OTEL_* values follow the OTel spec even in strict mode: warn and use the default.
    loaded = settings.load(environ={"AGENSIUM_STRICT": "true", "OTEL_METRIC_EXPORT_INTERVAL": "-5"})
    assert loaded.metric_export_interval == 60000 and len(loaded.problems) == 1


def test_demo_runs_prints_seed_metrics_and_trace_id_and_warns_once_on_bad_setting():
    result = run_cli("demo", env={"AGENSIUM_MAX_TASK_NAMES": "lots"})
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "trace_id=" in out
    trace_id = out.split("trace_id=")[1].split()[0]
    assert len(trace_id) == 32 and int(trace_id, 16)
    for name in (
        "celery_tasks_received_total{",
        "celery_tasks_succeeded_total{",
        "celery_tasks_failed_total{",
        "celery_tasks_retried_total{",
    ):
        assert name in out
    assert 'celery_task_duration_seconds_bucket{le="1800"' in out
    warnings = [line for line in result.stderr.splitlines() if "AGENSIUM_MAX_TASK_NAMES" in line]
    assert len(warnings) == 1, result.stderr
    assert "Traceback" not in result.stderr.replace("ValueError: demo failure", "")


def _readme_default(value: object) -> str:
    """A default as the README's settings table writes it."""
    if value is None or value == {}:
        return "(unset)"
    if value == ():
        return "(the app's own)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def test_readme_settings_table_is_the_settings_table():
    """Row for row, the README's table has each setting's variable, argument and default, in order."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| variable | `configure()` argument | default | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.split(" | ")[:3]] for line in table.strip().splitlines()[1:]]
    documented = [(env.lstrip("| "), arg, default) for env, arg, default in rows]
    expected = [(f"`{s.env}`", f"`{s.name}`", _readme_default(s.default)) for s in settings.SETTINGS]
    assert documented == expected


def test_settings_command_prints_each_default_as_the_variable_is_written():
    result = run_cli("settings")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert len(lines) == len(settings.SETTINGS)
    for s in settings.SETTINGS:
        written = _readme_default(s.default).strip("`")
        if s.default in (None, {}, ()):
            written = "<none>"
        elif isinstance(s.default, tuple):
            written = ",".join(s.default)
        assert f" default={written} " in lines[s.env] + " ", lines[s.env]


def test_demo_against_a_real_redis_broker(redis_server):
    result = run_cli("demo", "--broker", redis_server.url, "--tasks", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10/10 tasks finished" in result.stdout
    assert 'celery_tasks_succeeded_total{queue="celery",task_name="demo.ok"} 4.0' in result.stdout
    assert 'celery_tasks_succeeded_total{queue="profile",task_name="demo.ok"} 4.0' in result.stdout
