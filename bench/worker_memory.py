"""RSS of a worker over many tasks with the OTLP endpoint unreachable (full telemetry on).

Bounded queues must drop, not buffer: the worker's resident memory after the first 10% of the
tasks (warm) and at the end should differ by little.

    python -m bench.worker_memory [--tasks 100000] [--variant agensium-full]
"""

from __future__ import annotations

import argparse
import time

import redis

from bench.celery_throughput import publisher
from bench.common import celery_worker, free_port, machine, publish, redis_server, rss_kib, stop, variant_env, wait_done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--variant", default="agensium-full")
    args = parser.parse_args()
    with redis_server() as broker:
        client = redis.Redis.from_url(broker)
        app = publisher(broker)
        prefix, env = variant_env(args.variant, f"http://127.0.0.1:{free_port()}")  # nothing listens there
        env["OTEL_EXPORTER_OTLP_TIMEOUT"] = "1"
        worker = celery_worker(broker, env, "solo", prefix=prefix)
        try:
            samples: list[tuple[int, int]] = []
            batch = 5000
            published = 0
            started = time.monotonic()
            while published < args.tasks:
                count = min(batch, args.tasks - published)
                publish(app, count)
                published += count
                # keep the queue short: wait until the worker caught up with this batch
                wait_done(client, published, worker, 600)
                samples.append((published, rss_kib(worker.pid)))
                print(f"  {published:7d} tasks  RSS {samples[-1][1] / 1024:7.1f} MiB", flush=True)
            elapsed = time.monotonic() - started
        finally:
            stop(worker)
    warm = next(rss for done, rss in samples if done >= args.tasks // 10)
    end = samples[-1][1]
    print(
        f"\nWorker RSS, --pool solo, {args.variant}, OTLP endpoint unreachable, {args.tasks} tasks "
        f"in {elapsed:.0f}s; {machine()}"
    )
    print(
        f"RSS after {args.tasks // 10} tasks: {warm / 1024:.1f} MiB; after {args.tasks}: {end / 1024:.1f} MiB; "
        f"growth {(end - warm) / 1024:+.1f} MiB"
    )


if __name__ == "__main__":
    main()
