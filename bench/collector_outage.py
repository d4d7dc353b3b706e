"""A worker with its Collector live, slow (answers after 1 s), refusing connections, or a black hole.

For each endpoint state, alternated round by round in one run:
  tasks/s     throughput of a no-op task under otel-agensium (traces, metrics, logs, 100% sampling),
              as in bench/celery_throughput.py; the ratio to the live endpoint is printed
  shutdown s  warm shutdown of a prefork worker (--concurrency 2) after 50 finished tasks:
              SIGTERM to the main process until it exited, AGENSIUM_SHUTDOWN_TIMEOUT as given

    python -m bench.collector_outage [--tasks 2000] [--rounds 3] [--pool prefork] [--budget 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import redis

from bench.celery_throughput import one_run, publisher
from bench.common import celery_worker, machine, median, otlp_sink, publish, redis_server, variant_env, wait_done
from tests.otlp_receiver import Receiver
from tests.procs import BlackHole, refusing_endpoint

STATES = ("live", "slow", "refusing", "blackhole")  # black hole: accepts connections, never answers


@contextlib.contextmanager
def endpoints() -> Iterator[dict[str, str]]:
    with otlp_sink() as live, Receiver(delay=1.0) as slow, BlackHole() as hole:
        yield {"live": live, "slow": slow.endpoint, "refusing": refusing_endpoint(), "blackhole": hole.endpoint}


def warm_shutdown_seconds(broker: str, endpoint: str, env: dict[str, str], tasks: int = 50) -> float:
    """Start a prefork worker, let it finish ``tasks`` tasks, SIGTERM its main process, time the exit."""
    client = redis.Redis.from_url(broker)
    client.flushdb()
    prefix, variant = variant_env("agensium-full", endpoint)
    worker = celery_worker(broker, {**variant, **env}, "prefork", 2, prefix)
    try:
        publish(publisher(broker), tasks)
        wait_done(client, tasks, worker, 120, poll=0.01)
        started = time.monotonic()
        os.kill(worker.pid, signal.SIGTERM)  # the main process only, as Kubernetes does
        worker.wait(120)
        return time.monotonic() - started
    except subprocess.TimeoutExpired:
        return float("inf")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", default="prefork", choices=["solo", "prefork"])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--budget", default="5", help="AGENSIUM_SHUTDOWN_TIMEOUT in seconds")
    args = parser.parse_args()
    env = {"AGENSIUM_SHUTDOWN_TIMEOUT": args.budget}
    tps: dict[str, list[float]] = {s: [] for s in STATES}
    stops: dict[str, list[float]] = {s: [] for s in STATES}
    with redis_server() as broker, endpoints() as urls:
        for round_no in range(args.rounds):
            for state in STATES if round_no % 2 == 0 else reversed(STATES):
                with _environ(env):
                    tps[state].append(
                        one_run("agensium-full", broker, urls[state], args.tasks, args.pool, args.concurrency)[0]
                    )
                stops[state].append(warm_shutdown_seconds(broker, urls[state], env))
                print(
                    f"  round {round_no + 1} {state:10} {tps[state][-1]:8.0f} tasks/s, "
                    f"warm shutdown {stops[state][-1]:5.1f} s",
                    flush=True,
                )
    live = median(tps["live"])
    conc = "" if args.pool == "solo" else f" --concurrency {args.concurrency}"
    print(
        f"\nCollector outage, --pool {args.pool}{conc}, {args.tasks} tasks x {args.rounds} rounds, "
        f"AGENSIUM_SHUTDOWN_TIMEOUT={args.budget}; {machine()}"
    )
    print(f"{'endpoint':10} {'tasks/s':>9} {'ratio':>7} {'warm shutdown s (median, max)':>31}")
    for state in STATES:
        print(
            f"{state:10} {median(tps[state]):9.0f} {median(tps[state]) / live:7.2f} "
            f"{median(stops[state]):22.1f} {max(stops[state]):6.1f}"
        )


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    """``one_run`` passes this process's environment on to the worker it starts."""
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


if __name__ == "__main__":
    main()
