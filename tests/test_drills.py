"""Fault drills against real processes: each prints what it held (run with -s to see the figures)."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
import redis

from tests.otlp_receiver import Receiver, wait_for
from tests.procs import celery_worker, free_port

EXPORT_WARNING = re.compile(r"otel-agensium: \w+ export to .* failed")


def _use(redis_server):
    from tests.apps import drill_app

    drill_app.app.conf.broker_url = redis_server.url
    drill_app.app.conf.result_backend = redis_server.url
    return drill_app


def _key(queue, task):
    return (("queue", queue), ("task_name", task))


def test_collector_down_then_back(redis_server):
    """Every task succeeds while the endpoint is down; one warning per process; export resumes."""
    drill = _use(redis_server)
    port = free_port()  # nothing listens here yet
    worker = celery_worker(
        "tests.apps.drill_app",
        redis_server.url,
        f"http://127.0.0.1:{port}",
        "drill-down",
        name="down",
        env={"OTEL_EXPORTER_OTLP_TIMEOUT": "1"},
    )
    try:
        started = time.monotonic()
        results = [drill.quick.apply_async((i,), queue="drill-down") for i in range(200)]
        assert [r.get(timeout=60) for r in results] == list(range(200))
        down_rate = 200 / (time.monotonic() - started)
        time.sleep(2)  # several export attempts fail meanwhile (interval 0.5 s)
        warnings = [line for line in worker.lines if EXPORT_WARNING.search(line)]
        # one warning a minute at most, per process (main process and two children)
        assert 1 <= len(warnings) <= 3, warnings
        assert not [line for line in worker.lines if "Traceback" in line]
        with Receiver(port=port) as receiver:
            results = [drill.quick.apply_async((i,), queue="drill-down") for i in range(20)]
            assert [r.get(timeout=60) for r in results] == list(range(20))
            totals = wait_for(
                lambda: (
                    receiver.totals("celery_tasks_succeeded").get(_key("drill-down", "d.quick")) == 220
                    and receiver.totals("celery_tasks_succeeded")
                ),
                timeout=60,
            )
            spans = wait_for(lambda: [s for s in receiver.spans() if s["name"] == "run/d.quick"], timeout=30)
        succeeded = totals[_key("drill-down", "d.quick")]
        print(
            f"\n[drill collector-down] 200 tasks at {down_rate:.0f}/s with the endpoint down, "
            f"{len(warnings)} warning line(s); after it came back: succeeded={succeeded:.0f}, "
            f"{len(spans)} run spans exported"
        )
    finally:
        worker.stop()


def test_warm_shutdown_after_burst_loses_nothing(redis_server):
    """SIGTERM right after a burst: every finished task's span and count reaches the receiver."""
    drill = _use(redis_server)
    with Receiver() as receiver:
        worker = celery_worker(
            "tests.apps.drill_app",
            redis_server.url,
            receiver.endpoint,
            "drill-burst",
            name="burst",
            env={"OTEL_METRIC_EXPORT_INTERVAL": "600000", "OTEL_BSP_SCHEDULE_DELAY": "600000"},
        )
        try:
            results = [drill.quick.apply_async((i,), queue="drill-burst") for i in range(50)]
            assert [r.get(timeout=60) for r in results] == list(range(50))
            assert not receiver.spans()  # nothing exported yet: the flush at shutdown must do it
        finally:
            worker.stop(signal.SIGTERM)
        key = _key("drill-burst", "d.quick")
        succeeded = receiver.totals("celery_tasks_succeeded").get(key)
        received = receiver.totals("celery_tasks_received").get(key)
        runs = [s for s in receiver.spans() if s["name"] == "run/d.quick"]
        print(
            f"\n[drill warm-shutdown] 50 tasks finished, after SIGTERM: succeeded={succeeded}, "
            f"run spans={len(runs)}, received={received}"
        )
        assert succeeded == 50
        assert received == 50
        assert len(runs) == 50


def test_child_killed_mid_task_counts_one_failure_and_others_go_on(redis_server):
    drill = _use(redis_server)
    client = redis.Redis.from_url(redis_server.url)
    client.delete("drill:nap")
    with Receiver() as receiver:
        worker = celery_worker("tests.apps.drill_app", redis_server.url, receiver.endpoint, "drill-kill", name="kill")
        try:
            victim = drill.nap.apply_async((30,), queue="drill-kill")
            pid = int(wait_for(lambda: client.get("drill:nap"), timeout=30))
            before = [drill.quick.apply_async((i,), queue="drill-kill") for i in range(10)]
            assert [r.get(timeout=60) for r in before] == list(range(10))
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(Exception, match="(?i)worker|signal"):
                victim.get(timeout=60, propagate=True)
            after = [drill.quick.apply_async((i,), queue="drill-kill") for i in range(10)]
            assert [r.get(timeout=60) for r in after] == list(range(10))

            def settled():
                s = receiver.totals("celery_tasks_succeeded").get(_key("drill-kill", "d.quick"))
                f = receiver.totals("celery_tasks_failed").get(_key("drill-kill", "d.nap"))
                return (s, f) if (s, f) == (20, 1) else None

            try:
                succeeded, failed = wait_for(settled, timeout=30)
            except AssertionError:
                raise AssertionError(
                    f"succeeded/failed/received: {receiver.totals('celery_tasks_succeeded')} "
                    f"{receiver.totals('celery_tasks_failed')} "
                    f"{receiver.totals('celery_tasks_received')}"
                ) from None
            exceptions = {
                dict(k)["exception"]: v
                for k, v in receiver.totals("celery_task_exceptions").items()
                if dict(k)["task_name"] == "d.nap"
            }
            print(
                f"\n[drill child-killed] other tasks succeeded={succeeded}, killed task failed={failed}, "
                f"exceptions={exceptions}"
            )
            assert exceptions == {"WorkerLostError": 1}
            assert receiver.totals("celery_tasks_received")[_key("drill-kill", "d.nap")] == 1
        finally:
            worker.stop()


def test_soft_time_limit_counts_once(redis_server):
    drill = _use(redis_server)
    with Receiver() as receiver:
        worker = celery_worker("tests.apps.drill_app", redis_server.url, receiver.endpoint, "drill-limit", name="limit")
        try:
            with pytest.raises(Exception, match="SoftTimeLimitExceeded"):
                drill.soft_limit.apply_async(queue="drill-limit").get(timeout=60, propagate=True)
            hits = wait_for(lambda: receiver.totals("celery_task_time_limit_hits"), timeout=30)
            assert hits == {(("limit", "soft"), ("queue", "drill-limit"), ("task_name", "d.soft_limit")): 1}
            exc = wait_for(lambda: receiver.totals("celery_task_exceptions"), timeout=30)
            assert exc == {(("exception", "SoftTimeLimitExceeded"), ("task_name", "d.soft_limit")): 1}
            assert receiver.totals("celery_tasks_failed") == {_key("drill-limit", "d.soft_limit"): 1}
        finally:
            worker.stop()
