"""`otel-agensium doctor` and the signals behind the seed's troubleshooting guide, against real parts.

A password-protected redis-server on a free port, real prefork workers under `opentelemetry-instrument`,
the real CLI in a subprocess, and a local OTLP receiver for the workers' metrics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests import prom
from tests.otlp_receiver import wait_for
from tests.procs import ROOT, RedisServer, celery_worker, free_port, run_cli

PASSWORD = "doctor-pw-4b7e1f"
APP = "tests.apps.doctor_app"
RSS = "celery_worker_process_resident_memory_bytes"
CPU = "celery_worker_process_cpu_seconds"
LIMIT = "celery_worker_process_memory_limit_bytes"


@pytest.fixture(scope="module")
def broker():
    server = RedisServer(password=PASSWORD).start()
    yield server
    server.stop()


def doctor(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = run_cli("doctor", *args, env=env, timeout=timeout, drop=("OTEL_", "AGENSIUM_", "TEST_BROKER"))
    return result, time.monotonic() - started


def doctor_json(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict], float]:
    result, elapsed = doctor(*args, "--json", env=env)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    checks = json.loads(result.stdout)
    assert isinstance(checks, list)
    return result.returncode, {c["check"]: c for c in checks}, elapsed


def lines_by_check(stdout: str) -> dict[str, str]:
    return {line.split()[0]: line for line in stdout.splitlines() if line.strip() and not line[0].isdigit()}


def test_unconsumed_queue_flagged_then_all_pass_with_a_worker_on_both(broker, receiver):
    from tests.apps import doctor_app

    doctor_app.app.conf.broker_url = broker.url
    doctor_app.app.conf.result_backend = broker.url
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    only_celery = celery_worker(APP, broker.url, receiver.endpoint, "celery", name="doc-celery")
    try:
        waiting = [doctor_app.profile.apply_async((i,)) for i in range(3)]  # routed to `profile`
        result, elapsed = doctor("-A", APP, "--broker", broker.url, env=env)
        out = result.stdout
        print(f"\n[doctor, nobody on profile] exit {result.returncode} in {elapsed:.1f} s\n{out}")
        assert result.returncode == 1, out + result.stderr
        lines = lines_by_check(out)
        assert " ok " in lines["broker"] and " ok " in lines["workers"] and "doc-celery@" in lines["workers"]
        assert " ok " in lines["queue:celery"]
        profile = lines["queue:profile"]
        assert " FAIL " in profile and "3 waiting" in profile and "no live worker consumes it" in profile
        assert "Fix: Start a worker that consumes it (celery -A tests.apps.doctor_app worker -Q profile)" in profile
        assert [name for name, line in lines.items() if " FAIL " in line] == ["queue:profile"]
        assert PASSWORD not in out + result.stderr and "Traceback" not in out + result.stderr

        code, checks, _ = doctor_json("-A", APP, "--broker", broker.url, env=env)
        assert code == 1
        assert checks["queue:profile"]["verdict"] == "FAIL"
        assert checks["queue:profile"]["data"] == {"queue": "profile", "workers": [], "waiting": 3, "routed": True}
        assert checks["queue:celery"]["verdict"] == "ok"
    finally:
        only_celery.stop()

    both = celery_worker(APP, broker.url, receiver.endpoint, "celery,profile", name="doc-both")
    try:
        assert [r.get(timeout=60) for r in waiting] == [0, 1, 2]
        code, checks, elapsed = doctor_json("-A", APP, "--broker", broker.url, env=env)
        print(
            f"[doctor, worker on both] exit {code} in {elapsed:.1f} s: "
            + ", ".join(f"{name}={c['verdict']}" for name, c in checks.items())
        )
        assert code == 0
        assert {name: c["verdict"] for name, c in checks.items()} == {
            "settings": "ok",
            "app": "ok",
            "broker": "ok",
            "workers": "ok",
            "queue:celery": "ok",
            "queue:profile": "ok",
            "beat": "skipped",
            "eta": "ok",
            "otlp": "ok",
            "time_limits": "ok",
            "memory_limit": "ok",
        }
        assert checks["queue:profile"]["data"]["waiting"] == 0
        assert checks["workers"]["data"]["workers"][0].startswith("doc-both@")
    finally:
        both.stop()


def test_message_on_a_misspelt_queue_is_found(broker, receiver):
    """Not routed, not in AGENSIUM_QUEUES: found through kombu's bindings because messages wait there."""
    from tests.apps import doctor_app

    doctor_app.app.conf.broker_url = broker.url
    doctor_app.ok.apply_async(queue="profle")
    try:
        code, checks, _ = doctor_json(
            "-A", APP, "--broker", broker.url, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        )
        assert code == 1
        check = checks["queue:profle"]
        assert check["verdict"] == "FAIL" and check["data"]["waiting"] == 1 and not check["data"]["routed"]
        assert "purge -Q profle" in check["fix"]
    finally:
        import redis

        redis.Redis.from_url(broker.url).delete("profle")  # leaves `profle` empty for the other tests


def test_wrong_password_is_an_authentication_failure_and_is_not_printed(broker, receiver):
    wrong = broker.url.replace(PASSWORD, "not-the-pw-93c1")
    result, _ = doctor("-A", APP, "--broker", wrong, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})
    lines = lines_by_check(result.stdout)
    assert result.returncode == 1
    assert " FAIL " in lines["broker"] and "authentication failed" in lines["broker"]
    assert "Fix: Put the broker's password in the broker URL" in lines["broker"]
    assert lines["workers"].split(None, 1)[1] == "skipped (broker unreachable)"
    for secret in ("not-the-pw-93c1", PASSWORD):
        assert secret not in result.stdout + result.stderr


def test_redis_stopped_or_frozen_broker_fails_within_timeout_and_the_rest_is_skipped(receiver):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    server = RedisServer(password=PASSWORD).start()
    url = server.url
    try:
        # Frozen: connections are accepted, nothing answers.
        os.kill(server.proc.proc.pid, signal.SIGSTOP)
        code, checks, elapsed = doctor_json("-A", APP, "--broker", url, "--timeout", "1", env=env)
        frozen = checks["broker"]
        print(
            f"\n[doctor, redis frozen] broker: {frozen['detail']} after {frozen['seconds']} s "
            f"(whole run {elapsed:.1f} s)"
        )
        assert code == 1 and frozen["verdict"] == "FAIL" and "no answer within 1 s" in frozen["detail"]
        assert frozen["seconds"] <= 1.5
        os.kill(server.proc.proc.pid, signal.SIGCONT)
    finally:
        server.stop()
    # Stopped: nothing listens on the port any more.
    result, elapsed = doctor("-A", APP, "--broker", url, "--timeout", "2", env=env)
    print(f"[doctor, redis stopped] exit {result.returncode} in {elapsed:.1f} s\n{result.stdout}")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr and PASSWORD not in result.stdout + result.stderr
    lines = lines_by_check(result.stdout)
    assert " FAIL " in lines["broker"] and "connection refused" in lines["broker"]
    assert "Fix: Start the broker (redis-server" in lines["broker"]
    for name in ("workers", "queues"):
        assert lines[name] == f"{name:<16} skipped (broker unreachable)"
    for name in ("otlp", "time_limits", "memory_limit", "app", "settings"):
        assert " ok " in lines[name], lines[name]
    code, checks, elapsed = doctor_json("-A", APP, "--broker", url, "--timeout", "2", env=env)
    assert code == 1 and checks["broker"]["verdict"] == "FAIL" and checks["broker"]["seconds"] <= 2.5
    assert checks["workers"]["verdict"] == checks["queues"]["verdict"] == "skipped"
    assert elapsed < 15


def test_otlp_endpoint_down_and_missing_limits(broker):
    port = free_port()  # nothing listens here
    result, _ = doctor(
        "-A",
        "tests.apps.tasks_app",
        "--broker",
        broker.url,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"},
    )
    lines = lines_by_check(result.stdout)
    assert result.returncode == 1
    assert " FAIL " in lines["otlp"] and "connection refused" in lines["otlp"]
    assert "Fix: Start the Collector" in lines["otlp"]
    # tasks_app sets neither limit: advice, not a failure.
    assert " warn " in lines["time_limits"] and "Fix: Set task_soft_time_limit" in lines["time_limits"]
    assert " warn " in lines["memory_limit"] and "--max-memory-per-child=500000" in lines["memory_limit"]
    assert "Traceback" not in result.stdout + result.stderr


def test_app_that_cannot_import_a_task_module_fails_and_the_broker_is_still_checked(broker, receiver, tmp_path):
    """The seed's "tasks failing immediately": an import error in the app or a task module."""
    (tmp_path / "broken_doctor_app.py").write_text("import missing_dependency_for_doctor_test\n")
    result, _ = doctor(
        "-A",
        "broken_doctor_app",
        "--broker",
        broker.url,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "PYTHONPATH": str(tmp_path)},
    )
    lines = lines_by_check(result.stdout)
    assert result.returncode == 1
    assert " FAIL " in lines["app"] and "No module named 'missing_dependency_for_doctor_test'" in lines["app"]
    assert " ok " in lines["broker"]  # on --broker, without the app
    assert lines["time_limits"].split(None, 1)[1] == "skipped (no app loaded)"
    assert "Traceback" not in result.stdout + result.stderr


def test_usage_error_without_app_or_broker():
    result, _ = doctor()
    assert result.returncode == 2 and "give -A/--app or --broker" in result.stderr


# ------------------------------------------------------------------ the metrics behind the guide
def _by_instance(receiver, name):
    """{service.instance.id: (process_role, latest point time, value)}."""
    out = {}
    for (instance, _), point in receiver.points(name).items():
        dp = point["dp"]
        value = dp.as_double if dp.WhichOneof("value") == "as_double" else dp.as_int
        out[instance] = (point["attributes"]["process_role"], point["time"], value, point["attributes"])
    return out


def test_soft_time_limit_and_exception_counted_once_and_memory_per_child(redis_server, receiver):
    from tests.apps import drill_app

    drill_app.app.conf.broker_url = redis_server.url
    drill_app.app.conf.result_backend = redis_server.url
    worker = celery_worker(
        "tests.apps.drill_app", redis_server.url, receiver.endpoint, "doctor-limit", name="doc-limit", concurrency=2
    )
    try:
        # Resident memory and CPU time for the main process and each of the two children.
        def three_processes():
            rss = {i: v for i, v in _by_instance(receiver, RSS).items() if v[3]["worker"].startswith("doc-limit@")}
            roles = sorted(v[0] for v in rss.values())
            return rss if roles == ["child", "child", "main"] else None

        rss = wait_for(three_processes, timeout=30)
        cpu = _by_instance(receiver, CPU)
        assert set(rss) <= set(cpu), "every process that reports memory reports CPU time"
        for role, _, value, attrs in rss.values():
            assert 5_000_000 < value < 2_000_000_000, (role, value)
            assert set(attrs) == {"process_role", "worker"}
        print(
            f"\n[process metrics] {len(rss)} processes, distinct instance ids; resident MiB: "
            + ", ".join(f"{v[0]}={v[2] / 2**20:.0f}" for v in rss.values())
        )

        with pytest.raises(Exception, match="SoftTimeLimitExceeded"):
            drill_app.soft_limit.apply_async(queue="doctor-limit").get(timeout=60, propagate=True)
        key = (("limit", "soft"), ("queue", "doctor-limit"), ("task_name", "d.soft_limit"))

        def limit_counts():
            hits = receiver.totals("celery_task_time_limit_hits").get(key)
            exc = {
                k: v
                for k, v in receiver.totals("celery_task_exceptions").items()
                if dict(k)["task_name"] == "d.soft_limit"
            }
            return (hits, exc) if hits and exc else None

        wait_for(limit_counts, timeout=30)
        time.sleep(1.5)  # three more export intervals: nothing counted twice
        hits, exc = limit_counts()
        assert hits == 1
        assert exc == {(("exception", "SoftTimeLimitExceeded"), ("task_name", "d.soft_limit")): 1}
        failed = receiver.totals("celery_tasks_failed").get((("queue", "doctor-limit"), ("task_name", "d.soft_limit")))
        assert failed == 1
    finally:
        worker.stop()


def test_recycled_child_series_stops_and_the_new_child_appears(redis_server, receiver):
    from tests.apps import tasks_app

    tasks_app.app.conf.broker_url = redis_server.url
    tasks_app.app.conf.result_backend = redis_server.url
    worker = celery_worker(
        "tests.apps.tasks_app",
        redis_server.url,
        receiver.endpoint,
        "doctor-recycle",
        name="doc-recycle",
        concurrency=1,
        extra_args=["--max-tasks-per-child", "1", "--max-memory-per-child", "1500000"],
    )

    def children():
        return {
            i: v
            for i, v in _by_instance(receiver, RSS).items()
            if v[0] == "child" and v[3]["worker"].startswith("doc-recycle@")
        }

    try:
        first = wait_for(children, timeout=30)
        assert len(first) == 1
        (old,) = first
        limits = {i: v[2] for i, v in _by_instance(receiver, LIMIT).items()}
        assert limits.get(old) == 1_500_000 * 1024  # --max-memory-per-child, in bytes, on the child's series
        assert tasks_app.ok.apply_async((7,), queue="doctor-recycle").get(timeout=30) == 7
        # The child exits after its one task; the pool forks a new one with its own instance id.
        new = wait_for(lambda: [i for i in children() if i != old], timeout=30)
        assert len(new) == 1
        time.sleep(1.0)  # anything the old child had still in flight has arrived
        before = children()
        time.sleep(2.5)  # five export intervals
        after = children()
        assert after[old][1] == before[old][1], "the recycled child's memory series is still updated"
        assert after[new[0]][1] > before[new[0]][1], "the new child's memory series is not updated"
        # The old child's final flush carried its task counters but no memory point: that series
        # ends with the last periodic export, not with a point taken while the process exited.
        succeeded = {inst: p["time"] for (inst, _), p in receiver.points("celery_tasks_succeeded").items()}
        assert after[old][1] < succeeded[old]
        print(
            f"\n[recycling] old child's last memory point {(time.time_ns() - after[old][1]) / 1e9:.1f} s old "
            f"and frozen; new child's {(time.time_ns() - after[new[0]][1]) / 1e9:.1f} s old and advancing"
        )
    finally:
        worker.stop()


@pytest.mark.skipif(prom.prometheus_binary() is None, reason="Debian package `prometheus` missing")
def test_troubleshooting_panels_return_data_on_a_real_prometheus(redis_server, tmp_path):
    """The new panels' PromQL on what a real worker exported, scraped by a real Prometheus (pull endpoint)."""
    from tests.apps import drill_app, tasks_app

    drill_app.app.conf.broker_url = redis_server.url
    drill_app.app.conf.result_backend = redis_server.url
    port = free_port()
    worker = celery_worker(
        "tests.apps.drill_app",
        redis_server.url,
        "http://127.0.0.1:9",
        "doctor-prom",
        name="doc-prom",
        pool="solo",
        concurrency=1,
        env={"AGENSIUM_PROMETHEUS_PORT": str(port), "AGENSIUM_OTLP": "false"},
    )
    server = None
    try:
        server = prom.start_prometheus(tmp_path / "prom", [f"127.0.0.1:{port}"])
        prom.wait_for_result(server, "up == 1", timeout=30)
        for _ in range(3):  # failures across several scrapes, so increase() has two samples
            with pytest.raises(ValueError):
                tasks_app.fail.apply_async(queue="doctor-prom").get(timeout=30)
            time.sleep(1.2)
        dashboard = json.loads((ROOT / "grafana" / "dashboards" / "celery.json").read_text())
        panels = {p["title"]: p for p in prom.iter_panels(dashboard["panels"])}
        checked = {}
        for title in (
            "Resident memory per worker process",
            "CPU per worker process",
            "Failures by exception type",
            "Failures by task and exception (selected time range)",
        ):
            expr = prom.expand_grafana_variables(panels[title]["targets"][0]["expr"])
            result = prom.wait_for_result(server, expr, timeout=30)
            checked[title] = {tuple(sorted(r["metric"].items())): r["value"][1] for r in result}
        memory = checked["Resident memory per worker process"]
        assert len(memory) == 1
        labels = dict(next(iter(memory)))
        assert labels["process_role"] == "main" and labels["worker"].startswith("doc-prom@")
        assert 5_000_000 < float(next(iter(memory.values()))) < 2_000_000_000
        assert {dict(k)["exception"] for k in checked["Failures by exception type"]} == {"ValueError"}
        print(f"\n[panels on Prometheus] {', '.join(f'{t}: {len(v)} series' for t, v in checked.items())}")
    finally:
        if server is not None:
            prom.stop_prometheus(server)
        worker.stop()
