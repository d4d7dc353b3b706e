"""Cost of the backlog figures: one read of kombu's unacked hash (HSCAN + JSON per entry) and of the list tails.

Messages are published by Celery, then moved into the ``unacked`` hash in the format kombu's
Redis QoS writes when it delivers a message (``[message, exchange, routing_key]``), a third
of them with an ETA: what a monitor meets when workers hold that many prefetched and ETA tasks.

    python -m bench.backlog_read [--messages 10000 20000 50000]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timedelta, timezone

import redis
from celery import Celery

from bench.common import machine, median, redis_server
from otel_agensium.celery.backlog import RedisBacklog


def fill(client: redis.Redis, app: Celery, count: int, first: int = 0) -> None:
    eta = datetime.now(timezone.utc) + timedelta(hours=1)
    with app.producer_or_acquire() as producer:
        for i in range(count):
            app.send_task("t.ok", args=(i,), queue="bench-backlog", producer=producer, eta=eta if i % 3 == 0 else None)
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        raw = client.rpop("bench-backlog")
        tag = f"tag-{first + i}"  # a delivery tag is unique
        pipe.hset("unacked", tag, json.dumps([json.loads(raw), "", "bench-backlog"]))
        pipe.zadd("unacked_index", {tag: time.time()})
        if len(pipe) > 2000:
            pipe.execute()
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, nargs="+", default=[10_000, 20_000, 50_000])
    args = parser.parse_args()
    print(f"# backlog read ({machine()})")
    with redis_server() as broker:
        client = redis.Redis.from_url(broker)
        app = Celery("bench-backlog", broker=broker, set_as_current=False)
        filled = with_eta = 0
        for count in sorted(args.messages):
            fill(client, app, count - filled, first=filled)
            with_eta += (count - filled + 2) // 3
            filled = count
            reader = RedisBacklog(client)
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                result = reader.unacked()
                runs.append(time.perf_counter() - started)
            got = (sum(result.unacked.values()), sum(result.eta_held.values()))
            assert got == (count, with_eta), (got, count, with_eta)
            ms = median(runs) * 1000
            print(
                f"{count:>7} unacked ({sum(result.eta_held.values())} with an ETA): {ms:7.1f} ms per read, "
                f"{ms / count * 1000:.1f} us per entry"
            )
        started = time.perf_counter()
        for _ in range(100):
            RedisBacklog(client).oldest_ages(["celery", "profile", "clean", "master"])
        print(f"list tails of 4 queues (40 keys, one pipeline): {(time.perf_counter() - started) * 10:.2f} ms")


if __name__ == "__main__":
    main()
