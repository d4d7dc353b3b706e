"""All-or-nothing set-up: an integration that fails half way leaves nothing behind, and a second
install is refused. The failure is injected into a real dependency (the Celery publish/run tracing,
the URL-exclusion helper the web integration reads) of a real ``configure()`` in a fresh process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from otel_agensium.integration import Integration, IntegrationError, installed
from tests.procs import run_json

# Runs in a fresh interpreter: configure() and the patches it makes are process-wide.
_SCRIPT = r"""
import json, logging, sys
import fastapi, redis, redis.client
import opentelemetry.util.http
import celery.app.trace, celery.worker.consumer.consumer
from celery import signals
from otel_agensium.celery.tracing import LeanCeleryTracing

SIGNALS = [name for name in dir(signals) if isinstance(getattr(signals, name), signals.Signal)]

def state():
    return {
        "receivers": {name: len(getattr(signals, name).receivers) for name in SIGNALS},
        "root_handlers": [type(h).__name__ for h in logging.getLogger().handlers],
        "redis_wrapped": hasattr(redis.Redis.execute_command, "__wrapped__"),
        "pipeline_wrapped": hasattr(redis.client.Pipeline.execute, "__wrapped__"),
        "fastapi_wrapped": hasattr(fastapi.FastAPI.build_middleware_stack, "__wrapped__"),
        "run_hooked": [m.build_tracer.__module__ for m in (celery.app.trace, celery.worker.consumer.consumer)],
    }

def boom(*args, **kwargs):
    raise RuntimeError("injected failure")

where = sys.argv[1]
if where == "celery":  # the publish/run tracing, after ten signal handlers are connected
    LeanCeleryTracing.install = boom
elif where == "web":  # the last integration: logs, celery and redis are already in
    opentelemetry.util.http.get_excluded_urls = boom

before = state()
import otel_agensium
from otel_agensium.integration import installed

handle = otel_agensium.configure(service_name="failure-path", otlp=False, log_stdout=False,
                                 log_file=sys.argv[2])
print(json.dumps({"before": before, "after": state(), "enabled": handle.enabled,
                  "integrations": len(handle.integrations), "installed": sorted(installed())}))
"""


def _configure_with_failure(where: str, tmp_path) -> tuple[dict, str]:
    args = [sys.executable, "-c", _SCRIPT, where, str(tmp_path / "app.log")]
    return run_json(args, {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, inherit=False)


@pytest.mark.parametrize("where", ["celery", "web"])
def test_a_failing_integration_leaves_nothing_behind(where, tmp_path):
    report, stderr = _configure_with_failure(where, tmp_path)
    assert report["enabled"] is False and report["integrations"] == 0
    assert report["after"] == report["before"]  # no signal receiver, log handler or wrapper left
    assert report["installed"] == []
    assert "set-up failed (RuntimeError: injected failure); the application runs without telemetry" in stderr


def test_without_a_failure_the_same_script_installs_everything(tmp_path):
    report, _ = _configure_with_failure("none", tmp_path)
    assert report["enabled"] is True
    assert report["installed"] == [
        "celery",
        "celery-beat",
        "celery-canvas",
        "celery-worker-tasks",
        "error_counters",
        "logs",
        "redis",
        "web",
    ]  # worker probes only with AGENSIUM_WORKER_PROBE_PORT
    after, before = report["after"], report["before"]
    # Lean tracing and the task metrics run around Celery's tracer (run_hook), not on task_prerun/postrun.
    assert after["receivers"]["task_prerun"] == before["receivers"]["task_prerun"]
    assert after["receivers"]["task_postrun"] == before["receivers"]["task_postrun"]
    assert before["run_hooked"] == ["celery.app.trace"] * 2
    assert after["run_hooked"] == ["otel_agensium.celery.run_hook"] * 2
    assert after["receivers"]["task_received"] == before["receivers"]["task_received"] + 1
    assert after["redis_wrapped"] and after["pipeline_wrapped"] and after["fastapi_wrapped"]
    assert after["root_handlers"] == [*before["root_handlers"], "RotatingFileHandler"]


class _Steps(Integration):
    name = "test-steps"

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.done: list[int] = []

    def setup(self) -> None:
        for step in range(3):
            if step == self.fail_at:
                raise ValueError(f"step {step} failed")
            self.done.append(step)
            self.on_uninstall(lambda step=step: self.done.remove(step))


def test_a_failed_setup_takes_back_the_steps_done_and_can_be_retried():
    broken = _Steps(fail_at=2)
    with pytest.raises(ValueError, match="step 2 failed"):
        broken.install()
    assert broken.done == [] and not broken.installed and "test-steps" not in installed()
    working = _Steps()
    working.install()
    try:
        assert working.done == [0, 1, 2] and installed()["test-steps"] is working
    finally:
        working.uninstall()
    assert working.done == [] and "test-steps" not in installed()
    working.uninstall()  # twice is harmless


def test_a_second_install_is_refused():
    first = _Steps()
    first.install()
    try:
        with pytest.raises(IntegrationError, match="already installed"):
            first.install()
        with pytest.raises(IntegrationError, match="already installed in this process"):
            _Steps().install()
        assert first.done == [0, 1, 2]  # the refused installs changed nothing
    finally:
        first.uninstall()


_INSTRUMENTED = r"""
import json
import celery.signals, fastapi, redis
print(json.dumps({
    "redis_wrapped": hasattr(redis.Redis.execute_command, "__wrapped__"),
    "fastapi_wrapped": hasattr(fastapi.FastAPI.build_middleware_stack, "__wrapped__"),
    "task_prerun_receivers": len(celery.signals.task_prerun.receivers),
}))
"""


@pytest.mark.parametrize("disabled", [False, True])
def test_opentelemetry_instrument_loads_no_contrib_instrumentor_when_telemetry_is_off(disabled, tmp_path):
    """Under opentelemetry-instrument, the Celery, Redis and FastAPI instrumentors are configure()'s
    (lean, ours) or, with OTEL_SDK_DISABLED=true, nobody's: nothing wraps the app's calls then."""
    instrument = str(Path(sys.executable).parent / "opentelemetry-instrument")
    env = {
        "OTEL_PYTHON_DISTRO": "agensium",
        "OTEL_PYTHON_CONFIGURATOR": "agensium",
        "OTEL_SDK_DISABLED": "true" if disabled else "false",
        "AGENSIUM_OTLP": "false",
        "AGENSIUM_LOG_STDOUT": "false",
        "OTEL_SERVICE_NAME": "instrumented",
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    report, _ = run_json([instrument, sys.executable, "-c", _INSTRUMENTED], env, inherit=False)
    if disabled:
        assert report == {"redis_wrapped": False, "fastapi_wrapped": False, "task_prerun_receivers": 0}
    else:  # ours: the Redis filter and the lean middleware; no task_prerun receiver in lean mode
        assert report == {"redis_wrapped": True, "fastapi_wrapped": True, "task_prerun_receivers": 0}


_GAUGES = r"""
import json, logging, sys
from celery import Celery
import otel_agensium
from otel_agensium.integration import IntegrationError

said = []
class Keep(logging.Handler):
    def emit(self, record):
        said.append(record.getMessage())
logging.getLogger("otel_agensium").addHandler(Keep())

first, other = Celery("first", broker=sys.argv[1]), Celery("other", broker=sys.argv[1])
early = otel_agensium.install_queue_gauges(first)
otel_agensium.configure(otlp=False, logs=False)
gauges = otel_agensium.install_queue_gauges(first)
again = otel_agensium.install_queue_gauges(first)
try:
    otel_agensium.install_queue_gauges(other)
    refused = None
except IntegrationError as exc:
    refused = str(exc)
print(json.dumps({"early": early, "said": said, "installed": gauges is not None, "same": again is gauges,
                  "refused": refused}))
"""


def test_queue_gauges_before_configure_and_for_a_second_app_say_so(redis_server):
    """Before configure(): None and one warning line; again for the same app: the same gauges; for
    another app: IntegrationError naming the app they watch (one set per process)."""
    out, _ = run_json([sys.executable, "-c", _GAUGES, redis_server.url])
    assert out["early"] is None
    assert [line for line in out["said"] if "install_queue_gauges() called before" in line], out["said"]
    assert out["installed"] and out["same"]
    assert out["refused"] and "already installed for the Celery app 'first'" in out["refused"], out


_AGAIN = r"""
import json, logging, sys
said = []
class Keep(logging.Handler):
    def emit(self, record):
        said.append(record.getMessage())
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.WARNING)

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
import otel_agensium

if sys.argv[1] == "own-providers":
    trace.set_tracer_provider(TracerProvider())
    metrics.set_meter_provider(MeterProvider())
    h = otel_agensium.configure(otlp=False, logs=False)
    out = {"ours_global": trace.get_tracer_provider() is h.tracer_provider}
else:
    h = otel_agensium.configure(service_name="first", otlp=False, logs=False)
    again = otel_agensium.configure(service_name="second", traces=False)
    otel_agensium.configure(service_name="second", traces=False)  # said once, not per call
    otel_agensium.configure()  # nothing asked: nothing to say
    h.shutdown()
    after = otel_agensium.configure(service_name="third")
    out = {"same": again is h and after is h, "service": h.settings.service_name}
print(json.dumps({**out, "said": said}))
"""


def test_a_provider_set_before_configure_is_said_in_one_line_per_signal():
    out, _ = run_json([sys.executable, "-c", _AGAIN, "own-providers"])
    assert out["ours_global"] is False
    lines = [line for line in out["said"] if "was set before configure()" in line]
    assert len(lines) == 2 and "a TracerProvider (TracerProvider)" in lines[0] and "MeterProvider" in lines[1], out
    assert not [line for line in out["said"] if "Overriding of current" in line], out  # not the SDK's too


def test_configure_again_says_once_what_it_ignores():
    out, _ = run_json([sys.executable, "-c", _AGAIN, "again"])
    assert out["same"] and out["service"] == "first"
    ignored = [line for line in out["said"] if "these arguments are ignored" in line]
    assert len(ignored) == 1 and ignored[0].endswith("ignored: service_name, traces"), out
    assert len([line for line in out["said"] if "configure() called after shutdown()" in line]) == 1, out
