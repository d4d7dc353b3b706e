"""celery_queue_length and celery_active_workers against a real redis-server, RabbitMQ and real workers."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import threading
import time
import uuid

import httpx
import pytest
import redis
from celery import Celery
from kombu import Queue
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_agensium._probe import Probe
from otel_agensium.celery.gauges import QueueGauges
from otel_agensium.celery.metrics import ACTIVE_WORKERS, QUEUE_LENGTH
from otel_agensium.celery.queues import CeleryQueues, redis_keys
from tests.otlp_receiver import wait_for
from tests.procs import Proc, RedisServer, celery_worker, free_port, monitor_args, run_json

RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672//"
# (priority, messages) per queue; kombu's default steps are 0, 3, 6, 9: 5 -> 3, 7 -> 6.
PLAN = {"a": [(0, 3), (3, 2), (5, 1), (9, 4)], "b": [(0, 5)], "c": [(7, 2), (0, 1)]}


def _names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {key: f"agq-{key}-{tag}" for key in (*PLAN, "empty")}


def _expected(names: dict[str, str]) -> dict[str, int]:
    out = {names[key]: sum(n for _, n in items) for key, items in PLAN.items()}
    out[names["empty"]] = 0
    return out


def _app(broker: str, **conf) -> Celery:
    app = Celery(f"queues-{uuid.uuid4().hex[:6]}", broker=broker, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=False, **conf)
    return app


def _publish(app: Celery, names: dict[str, str]) -> None:
    for key, items in PLAN.items():
        for priority, count in items:
            for _ in range(count):
                app.send_task("t.ok", queue=names[key], priority=priority)


def _gauges(app: Celery, queues) -> tuple[QueueGauges, InMemoryMetricReader, MeterProvider]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    gauges = QueueGauges(CeleryQueues(app, queues, timeout=2.0, inspect_timeout=0.5), provider, ttl=0)
    gauges.install()
    return gauges, reader, provider


def _collect(reader: InMemoryMetricReader) -> dict[str, dict]:
    """{metric name: {"unit": ..., "values": {queue: value}}} of one collection."""
    out: dict[str, dict] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                values = {dp.attributes["queue"]: dp.value for dp in metric.data.data_points}
                if values:
                    out[metric.name] = {"unit": metric.unit, "values": values}
    return out


def _gauge_lengths(app: Celery, queues) -> tuple[dict[str, int], str]:
    gauges, reader, provider = _gauges(app, queues)
    try:
        got = _collect(reader)[QUEUE_LENGTH]
    finally:
        provider.shutdown()
    return {q: got["values"][q] for q in queues if q in got["values"]}, got["unit"]


def test_redis_keys_follow_kombu_naming():
    from kombu.transport.redis import Channel

    channel = Channel.__new__(Channel)  # _q_for_pri needs only sep and priority_steps
    channel.priority_steps = [0, 3, 6, 9]
    ours = redis_keys("q", prefix="")
    for priority in range(10):
        assert channel._q_for_pri("q", priority) in ours
    assert ours[0] == "q" and "q\x06\x163" in ours
    assert redis_keys("q", prefix="p:")[0] == "p:q"


def test_probe_times_out_runs_one_check_at_a_time_and_reuses_answers():
    release = threading.Event()
    calls = []

    def hanging():
        calls.append(time.monotonic())
        release.wait(10)
        return len(calls)

    probe = Probe(hanging, ttl=5)
    started = time.monotonic()
    for _ in range(5):  # a burst while the dependency hangs: every caller times out, one run only
        with pytest.raises(concurrent.futures.TimeoutError):  # TimeoutError itself from 3.11
            probe.get(0.2)
    assert time.monotonic() - started < 3 and len(calls) == 1
    release.set()
    assert probe.get(2).value == 1
    assert probe.get(2).value == 1 and len(calls) == 1  # reused within the ttl

    failures = []

    def failing():
        failures.append(1)
        raise ConnectionError("redis://:hunter2@127.0.0.1:1/0 refused")

    probe = Probe(failing, ttl=5)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            probe.get(2)
    assert len(failures) == 1  # the failure is reused too: a burst does not hammer a dead Redis


def test_redis_depth_exact_with_priorities(redis_server):
    names = _names()
    app = _app(redis_server.url)
    _publish(app, names)
    raw = redis.Redis.from_url(redis_server.url)
    try:
        a = names["a"]
        # the priorities really landed in kombu's sub-lists
        assert [raw.llen(k) for k in (a, a + "\x06\x163", a + "\x06\x166", a + "\x06\x169")] == [3, 3, 0, 4]
        assert raw.llen(names["c"] + "\x06\x166") == 2
        expected = _expected(names)
        watched = CeleryQueues(app, list(expected))

        # one pipelined round trip for every key of every queue
        client = watched.redis_client()
        calls = {"execute": 0, "direct": 0}
        real_pipeline, real_execute_command = client.pipeline, client.execute_command

        def pipeline(*args, **kwargs):
            pipe = real_pipeline(*args, **kwargs)
            real_execute = pipe.execute

            def execute(*a, **kw):
                calls["execute"] += 1
                return real_execute(*a, **kw)

            pipe.execute = execute
            return pipe

        def execute_command(*args, **kwargs):
            calls["direct"] += 1
            return real_execute_command(*args, **kwargs)

        client.pipeline, client.execute_command = pipeline, execute_command
        assert watched.lengths() == expected
        assert calls == {"execute": 1, "direct": 0}

        lengths, unit = _gauge_lengths(app, list(expected))
        assert lengths == expected
        assert unit == "{message}"
    finally:
        raw.delete(*[k for q in names.values() for k in redis_keys(q)])


def test_redis_depth_with_global_keyprefix(redis_server):
    names = _names()
    prefix = f"agx{uuid.uuid4().hex[:4]}:"
    app = _app(redis_server.url, broker_transport_options={"global_keyprefix": prefix})
    _publish(app, names)
    raw = redis.Redis.from_url(redis_server.url)
    try:
        assert raw.llen(prefix + names["b"]) == 5 and not raw.exists(names["b"])
        expected = _expected(names)
        assert CeleryQueues(app, list(expected)).lengths() == expected
        assert _gauge_lengths(app, list(expected))[0] == expected
        # without the prefix the same queues look empty: the prefix is what finds them
        assert set(CeleryQueues(_app(redis_server.url), list(expected)).lengths().values()) == {0}
    finally:
        raw.delete(*[k for q in names.values() for k in redis_keys(q, prefix)])


def test_redis_down_reports_nothing_and_never_raises():
    server = RedisServer().start()
    names = _names()
    try:
        app = _app(server.url)
        app.send_task("t.ok", queue=names["a"])
        app.send_task("t.ok", queue=names["a"], priority=9)
        gauges, reader, provider = _gauges(app, [names["a"]])
        try:
            assert _collect(reader)[QUEUE_LENGTH]["values"] == {names["a"]: 2}
            server.stop()
            started = time.monotonic()
            got = _collect(reader)  # callbacks time out or fail: no point, no exception
            elapsed = time.monotonic() - started
            assert QUEUE_LENGTH not in got and ACTIVE_WORKERS not in got, got
            assert elapsed < 10, elapsed
            with pytest.raises(Exception):  # noqa: B017 - the raw call does raise
                gauges.queues.lengths()
        finally:
            provider.shutdown()
    finally:
        server.stop()


def _rabbit_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


def test_rabbitmq_depth_exact_with_priorities():
    if not _rabbit_reachable():
        pytest.skip("no RabbitMQ reachable at 127.0.0.1:5672 (amqp://guest:guest@127.0.0.1:5672//)")
    names = _names()
    app = _app(
        RABBIT_URL,
        task_queues=[Queue(names[key], routing_key=names[key], queue_arguments={"x-max-priority": 10}) for key in PLAN],
    )
    expected = _expected(names)
    try:
        _publish(app, names)
        watched = CeleryQueues(app, list(expected))
        assert not watched.is_redis
        # RabbitMQ counts a message once it is routed; wait (bounded) for the last publishes
        assert wait_for(lambda: watched.lengths() == expected, timeout=15, interval=0.2)
        assert _gauge_lengths(app, list(expected))[0] == expected
    finally:
        with app.connection_for_write() as conn:
            channel = conn.channel()
            for key in PLAN:
                channel.queue_delete(names[key])
            channel.close()


def _monitor(queues: str, *extra: str) -> list[str]:
    return monitor_args("tests.apps.tasks_app", queues, *extra)


def test_active_workers_drop_within_60s_of_sigkill(redis_server, receiver):
    tag = uuid.uuid4().hex[:6]
    qa, qb = f"agw-a-{tag}", f"agw-b-{tag}"
    env = {
        "TEST_BROKER_URL": redis_server.url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": f"monitor-{tag}",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "AGENSIUM_LOGS": "false",
        "AGENSIUM_PROMETHEUS_PORT": str(free_port()),
    }
    worker_a = celery_worker("tests.apps.tasks_app", redis_server.url, receiver.endpoint, qa, name=f"wa{tag}")
    worker_b = None
    monitor = None
    try:
        worker_b = celery_worker("tests.apps.tasks_app", redis_server.url, receiver.endpoint, qb, name=f"wb{tag}")
        # one-shot read: both workers, each on its queue
        report, _ = run_json(_monitor(f"{qa},{qb}", "--once"), env)
        assert report["active_workers"][qa] == 1 and report["active_workers"][qb] == 1, report
        assert report["queue_length"][qa] == 0, report

        monitor = Proc(_monitor(f"{qa},{qb}"), env=env, name="monitor")
        monitor.wait_for_line("otel-agensium monitor: watching", timeout=30)

        def workers() -> dict[str, int]:
            points = receiver.points(ACTIVE_WORKERS)
            mine = [p for p in points.values() if p["resource"].get("service.name") == f"monitor-{tag}"]
            latest: dict[str, tuple[int, int]] = {}
            for p in mine:
                queue, value, at = p["attributes"]["queue"], p["dp"].as_int, p["time"]
                if queue not in latest or at >= latest[queue][1]:
                    latest[queue] = (value, at)
            return {q: v for q, (v, _) in latest.items()}

        wait_for(lambda: workers().get(qa) == 1 and workers().get(qb) == 1, timeout=30)
        units = {p["unit"] for p in receiver.points(ACTIVE_WORKERS).values()}
        assert units == {"{worker}"}
        # the same gauges over the Prometheus pull endpoint, under the seed's names (no suffix)
        scrape = httpx.get(f"http://127.0.0.1:{env['AGENSIUM_PROMETHEUS_PORT']}/metrics", timeout=10).text
        assert re.search(rf'^celery_active_workers\{{[^}}]*queue="{qa}"[^}}]*\}} 1\.0$', scrape, re.M), scrape
        assert re.search(rf'^celery_queue_length\{{[^}}]*queue="{qb}"[^}}]*\}} 0\.0$', scrape, re.M), scrape

        killed = time.monotonic()
        os.killpg(worker_a.proc.pid, signal.SIGKILL)
        wait_for(lambda: workers().get(qa) == 0, timeout=60, interval=0.2)
        dropped_after = time.monotonic() - killed
        print(f"\ncelery_active_workers{{queue={qa}}} dropped 1 -> 0 {dropped_after:.1f} s after SIGKILL")
        assert dropped_after < 60
        assert workers().get(qb) == 1
        # the depth gauge comes from the same process
        lengths = {
            p["attributes"]["queue"]: p["dp"].as_int
            for p in receiver.points(QUEUE_LENGTH).values()
            if p["resource"].get("service.name") == f"monitor-{tag}"
        }
        assert lengths.get(qa) == 0 and lengths.get(qb) == 0, lengths
    finally:
        if monitor is not None:
            assert monitor.stop() == 0, monitor.output[-3000:]
        worker_a.stop(signal.SIGKILL)
        if worker_b is not None:
            worker_b.stop()


def test_default_queues_are_the_apps_own_plus_configured_ones():
    """AGENSIUM_QUEUES unset: the app's default queue, task_queues, task_routes and per-task queue=."""
    from otel_agensium.settings import load

    assert load(environ={}).queues == ()
    app = Celery("defaults", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.task_default_queue = "main"
    app.conf.task_queues = [Queue("main"), Queue("bulk")]
    app.conf.task_routes = {"reports.*": {"queue": "reports"}, "mail.send": "emails"}

    @app.task(name="thumbs.make", queue="images")
    def make() -> None: ...

    own = ["bulk", "emails", "images", "main", "reports"]
    assert sorted(CeleryQueues(app).queues()) == own
    assert sorted(CeleryQueues(app, load(environ={}).queues).queues()) == own
    assert CeleryQueues(app, ["only"]).queues() == ["only"]  # AGENSIUM_QUEUES or --queues set: those
