"""``otel-agensium demo``: the whole pipeline on one machine.

An in-process Celery worker (in-memory broker by default, or ``--broker redis://...``)
runs a few tasks that succeed, fail and retry on two queues, inside one traced
"request"; the demo then prints the Prometheus lines the package produced and the
trace id that links the request to the task runs.
"""

from __future__ import annotations

import logging
import socket
import sys
import time
import urllib.request

from celery import Celery


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _make_app(broker: str) -> Celery:
    app = Celery("agensium_demo", broker=broker, backend="cache+memory://")
    app.conf.update(task_default_queue="celery", broker_connection_retry_on_startup=False,
                    broker_connection_max_retries=1, worker_hijack_root_logger=False)

    @app.task(name="demo.ok")
    def ok(x: int) -> int:
        return x * 2

    @app.task(name="demo.fail")
    def fail() -> None:
        raise ValueError("demo failure")

    @app.task(name="demo.retry", bind=True, max_retries=1, default_retry_delay=0)
    def retry(self) -> str:
        if self.request.retries < 1:
            raise self.retry()
        return "retried once"

    return app


def run(broker: str = "memory://", tasks: int = 20, otlp: bool = False) -> int:
    from celery.contrib.testing.worker import start_worker
    from opentelemetry import trace

    from . import configure

    # demo.fail fails on purpose; its traceback would only clutter the output.
    logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)
    port = _free_port()
    handle = configure(service_name="otel-agensium-demo", prometheus_port=port, otlp=otlp)
    app = _make_app(broker)
    tracer = trace.get_tracer("otel_agensium.demo")
    print(f"otel-agensium demo: broker {_redact(broker)}, {tasks} tasks, metrics on :{port}")
    with start_worker(app, pool="solo", perform_ping_check=False, queues=["celery", "profile"],
                      shutdown_timeout=10):
        with tracer.start_as_current_span("demo request") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            results = [app.tasks["demo.ok"].apply_async((i,), queue="celery" if i % 2 else "profile")
                       for i in range(max(0, tasks - 2))]
            results.append(app.tasks["demo.fail"].apply_async(queue="profile"))
            results.append(app.tasks["demo.retry"].apply_async(queue="celery"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(r.ready() for r in results):
            time.sleep(0.05)
    handle.force_flush()
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    print("\n# Prometheus metrics produced (celery_*):")
    for line in body.splitlines():
        if line.startswith("celery_") and ("_bucket" not in line or 'le="1800"' in line):
            print(line.replace('otel_scope_name="otel_agensium.celery",otel_scope_schema_url="",', ""))
    print(f"\ntrace_id={trace_id}  (request span -> apply_async -> run, one trace)")
    done = sum(1 for r in results if r.ready())
    print(f"{done}/{len(results)} tasks finished (demo.fail fails and demo.retry retries once, on purpose)")
    handle.shutdown()
    return 0 if done == len(results) else 1


def _redact(url: str) -> str:
    from .redact import redact_url

    return redact_url(url)


if __name__ == "__main__":
    sys.exit(run())
