"""--max-tasks-per-child recycling: every child flushes on its way out, nothing lost, nothing doubled."""

from __future__ import annotations

from tests.otlp_receiver import Receiver, wait_for
from tests.procs import celery_worker


def test_recycled_children_flush_and_have_own_instance_ids(redis_server):
    from tests.apps import tasks_app

    tasks_app.app.conf.broker_url = redis_server.url
    tasks_app.app.conf.result_backend = redis_server.url
    with Receiver() as receiver:
        # A long export interval: what reaches the receiver was flushed at child shutdown.
        worker = celery_worker(
            "tests.apps.tasks_app",
            redis_server.url,
            receiver.endpoint,
            "recycle",
            name="recycle",
            concurrency=1,
            extra_args=["--max-tasks-per-child", "2"],
            env={"OTEL_METRIC_EXPORT_INTERVAL": "600000"},
        )
        try:
            for i in range(6):
                tasks_app.ok.apply_async((i,), queue="recycle").get(timeout=30)
            key = (("queue", "recycle"), ("task_name", "t.ok"))
            # Children 1 and 2 have been recycled: their 4 successes arrived without a periodic export.
            wait_for(lambda: receiver.totals("celery_tasks_succeeded").get(key, 0) >= 4, timeout=30)
        finally:
            worker.stop()
        totals = wait_for(
            lambda: (
                receiver.totals("celery_tasks_succeeded").get(key) == 6 and receiver.totals("celery_tasks_succeeded")
            ),
            timeout=30,
        )
        assert totals[key] == 6
        assert receiver.totals("celery_tasks_received")[key] == 6
        ids = {p["resource"]["service.instance.id"] for p in receiver.points("celery_tasks_succeeded").values()}
        assert len(ids) == 3, ids  # three children, two tasks each
