"""Throughput of a no-op task (one Redis INCR) through a real Redis broker and a real worker.

Variants, alternated round by round in one run to cancel machine drift:
  none              no instrumentation
  plain-otel        SDK defaults + contrib Celery and Redis instrumentors, OTLP/HTTP to a live sink
  agensium-full     opentelemetry-instrument + otel-agensium: traces, metrics, logs, 100% sampling
  agensium-metrics  otel-agensium with traces and logs off

Each run pre-fills the queue, starts the worker, and times the tasks done between the 25% and
100% marks (start-up excluded). Prints tasks/s per variant (median of rounds), the ratio to
``none``, and the time added per task.

    python -m bench.celery_throughput [--tasks 3000] [--rounds 3] [--pool solo|prefork]
"""

from __future__ import annotations

import argparse
import time

import redis

from bench.common import (
    VARIANTS,
    celery_worker,
    cpu_seconds,
    machine,
    median,
    otlp_sink,
    publish,
    redis_server,
    stop,
    variant_env,
)


def publisher(broker: str):
    """The uninstrumented publisher (this process): the bench app without any telemetry."""
    import os

    os.environ["BENCH_BROKER_URL"] = broker
    os.environ.pop("BENCH_VARIANT", None)
    from bench.app import app

    app.conf.broker_url = broker
    return app


def one_run(variant: str, broker: str, endpoint: str, tasks: int, pool: str, concurrency: int) -> tuple[float, float]:
    """(tasks/s, worker CPU microseconds per task) between the 25 % and 100 % marks."""
    client = redis.Redis.from_url(broker)
    client.flushdb()
    app = publisher(broker)
    publish(app, tasks)
    prefix, env = variant_env(variant, endpoint)
    worker = celery_worker(broker, env, pool, concurrency, prefix)
    try:
        # From 25 %: past start-up and each process's first span export (fastencode checks that one).
        start_mark, deadline = tasks // 4, time.monotonic() + 300
        t0 = None
        while time.monotonic() < deadline:
            done = int(client.get("bench:done") or 0)
            now = time.perf_counter()
            if t0 is None and done >= start_mark:
                t0, d0, c0 = now, done, cpu_seconds(worker.pid)
            if done >= tasks:
                return (done - d0) / (now - t0), (cpu_seconds(worker.pid) - c0) / (done - d0) * 1e6
            time.sleep(0.002)
        raise RuntimeError(f"{variant}: tasks did not finish in time")
    finally:
        stop(worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", default="solo", choices=["solo", "prefork"])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    variants = args.variants.split(",")
    results: dict[str, list[float]] = {v: [] for v in variants}
    with redis_server() as broker, otlp_sink() as endpoint:
        for round_no in range(args.rounds):
            order = variants if round_no % 2 == 0 else list(reversed(variants))
            for variant in order:
                tps, _ = one_run(variant, broker, endpoint, args.tasks, args.pool, args.concurrency)
                results[variant].append(tps)
                print(f"  round {round_no + 1} {variant:18} {tps:8.0f} tasks/s", flush=True)
    base = median(results["none"]) if "none" in results else None
    conc = "" if args.pool == "solo" else f" --concurrency {args.concurrency}"
    print(f"\nCelery throughput, --pool {args.pool}{conc}, {args.tasks} tasks x {args.rounds} rounds; {machine()}")
    print(f"{'variant':18} {'tasks/s':>9} {'ratio':>7} {'added/task':>11}")
    for variant in variants:
        tps = median(results[variant])
        ratio = tps / base if base else float("nan")
        added = (1 / tps - 1 / base) * 1e6 if base else float("nan")
        print(f"{variant:18} {tps:9.0f} {ratio:7.2f} {added:9.0f}us")


if __name__ == "__main__":
    main()
