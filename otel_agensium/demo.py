"""``otel-agensium demo``: the whole pipeline on one machine.

An in-process Celery worker (in-memory broker by default, or ``--broker redis://...``)
runs a few tasks that succeed, fail and retry on two queues, inside one traced
"request"; the demo then prints the Prometheus lines the package produced and the
trace id that links the request to the task runs.

Before anything waits on them, a real broker and (with ``--otlp``) the OTLP endpoint are
checked within ``AGENSIUM_HEALTH_TIMEOUT``, worded as ``doctor`` words them; with
``OTEL_SDK_DISABLED=true`` the demo says it has nothing to show and exits 0.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import urllib.request

from celery import Celery

# Seconds the in-memory broker sleeps after finding a queue empty (kombu's default: 1).
MEMORY_POLLING_INTERVAL = 0.01


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _make_app(broker: str, timeout: float) -> Celery:
    app = Celery("agensium_demo", broker=broker, backend="cache+memory://")
    app.conf.update(
        task_default_queue="celery",
        broker_connection_retry_on_startup=False,
        broker_connection_max_retries=1,
        broker_connection_timeout=timeout,
        broker_transport_options=_transport_options(broker, timeout),
        worker_hijack_root_logger=False,
    )

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


def _transport_options(broker: str, timeout: float) -> dict[str, float]:
    """Bound every broker wait; make the in-memory broker deliver as promptly as a real one.

    kombu's memory transport sleeps ``polling_interval`` (1 s) whenever it finds a queue
    empty, so each task waited about a second before it ran: the demo's queue-wait
    histogram showed the transport's timer, not anything a Redis or RabbitMQ worker sees
    (they block on the queue and wake when a message lands). 10 ms costs a few wakeups a
    second, for the demo's few seconds only.
    """
    if broker.startswith("memory://"):
        return {"polling_interval": MEMORY_POLLING_INTERVAL}
    if broker.startswith(("redis", "sentinel")):  # a command with no answer raises (kombu's BRPOP waits 1 s)
        return {"socket_timeout": timeout + 1, "socket_connect_timeout": timeout}
    return {}


def run(broker: str = "memory://", tasks: int = 20, otlp: bool = False) -> int:
    from .cli_errors import check_broker
    from .settings import load

    settings = load()
    if settings.sdk_disabled:
        print(
            "otel-agensium demo: nothing to show: OTEL_SDK_DISABLED=true turns all telemetry off, so no metric "
            "or trace would be produced. Run it without that variable: env -u OTEL_SDK_DISABLED otel-agensium demo"
        )
        return 0
    # demo.fail fails on purpose; its traceback would only clutter the output.
    logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)
    app = _make_app(broker, settings.health_timeout)
    if not broker.startswith("memory://"):
        check_broker(app, settings.health_timeout)  # a broker that refuses or hangs: one line, before any wait
    if otlp:
        _check_otlp(settings.health_timeout)
    from celery.contrib.testing.worker import start_worker  # imported once the checks passed
    from opentelemetry import trace

    from . import configure

    port = _free_port()
    handle = configure(service_name="otel-agensium-demo", prometheus_port=port, otlp=otlp)
    tracer = trace.get_tracer("otel_agensium.demo")
    print(
        f"otel-agensium demo: broker {_redact(broker)}, {tasks} tasks"
        + (f", metrics on :{port}" if settings.metrics else ""),
        flush=True,
    )
    with start_worker(app, pool="solo", perform_ping_check=False, queues=["celery", "profile"], shutdown_timeout=10):
        with tracer.start_as_current_span("demo request") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            results = [
                app.tasks["demo.ok"].apply_async((i,), queue="celery" if i % 2 else "profile")
                for i in range(max(0, tasks - 2))
            ]
            results.append(app.tasks["demo.fail"].apply_async(queue="profile"))
            results.append(app.tasks["demo.retry"].apply_async(queue="celery"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(r.ready() for r in results):
            time.sleep(0.05)
    handle.force_flush()
    if settings.metrics:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        print("\n# Prometheus metrics produced (celery_*):")
        for line in body.splitlines():
            if line.startswith("celery_") and ("_bucket" not in line or 'le="1800"' in line):
                print(line.replace('otel_scope_name="otel_agensium.celery",otel_scope_schema_url="",', ""))
    else:
        print("\n# no Prometheus metrics: AGENSIUM_METRICS=false turns them off")
    if settings.traces:
        print(f"\ntrace_id={trace_id}  (request span -> apply_async -> run, one trace)")
    else:
        print("\nno trace: AGENSIUM_TRACES=false turns traces off")
    done = sum(1 for r in results if r.ready())
    print(f"{done}/{len(results)} tasks finished (demo.fail fails and demo.retry retries once, on purpose)")
    handle.shutdown()
    return 0 if done == len(results) else 1


def _check_otlp(timeout: float) -> None:
    """Without a Collector the exporters would retry for half a minute at exit: say so at once instead."""
    from .cli_errors import FAILED, CommandError
    from .doctor import CHECKS, FAIL, Context, diagnose

    ctx = Context.create(None, None, timeout, environ={**os.environ, "AGENSIUM_OTLP": "true"})  # --otlp wins
    result = diagnose(ctx, [check for check in CHECKS if check.name == "otlp"])[0]
    if result.verdict == FAIL:
        raise CommandError(f"--otlp: {result.detail}", result.fix or "", FAILED)


def _redact(url: str) -> str:
    from .redact import redact_url

    return redact_url(url)


if __name__ == "__main__":
    sys.exit(run())
