"""Instructions per task of a solo worker, per variant, counted by valgrind (callgrind).

Instruction counts do not move with the machine's load the way times do, so this is the
steadiest measure of what telemetry adds per task (it does not see waiting: Redis round
trips, the scheduler). The worker starts under ``valgrind --tool=callgrind`` with
instrumentation off (start-up is not counted), works through ``--warmup`` tasks, then
counting is switched on (``callgrind_control -i on``), ``--tasks`` tasks are published and
run, and the count is read from a dump. All threads of the worker count, so the export
threads' encoding and HTTP requests are in. Slow: a worker under valgrind runs about
30-50x slower; a few minutes for the four variants.

    python -m bench.instructions [--tasks 512] [--variants none,agensium-metrics,agensium-full]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import redis

from bench.celery_throughput import publisher
from bench.common import (
    BIN,
    celery_worker,
    free_port,
    machine,
    otlp_sink,
    publish,
    redis_server,
    stop,
    uvicorn,
    variant_env,
    wait_done,
    wait_port,
)

# Besides bench.common's variants: full telemetry with no span recorded, to split the tracing cost
# into the path every call takes and the recording of spans.
# name -> (the bench.common variant it changes, the extra environment)
EXTRA_VARIANTS = {"agensium-unsampled": ("agensium-full", {"OTEL_TRACES_SAMPLER": "always_off"})}


def _callgrind(tmp: str, children: bool = False) -> list[str]:
    """valgrind's callgrind with counting off at start; its dumps go to ``tmp``."""
    trace = ["--trace-children=yes"] if children else []
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", *trace, f"--callgrind-out-file={tmp}/callgrind.out"]


def _counting_on(pid: int) -> None:
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)


def _dump_total(pid: int, tmp: str, keep: str | None = None, name: str = "") -> int:
    """Counting off, dump, the largest total of the dumps; ``keep``: a directory to copy them to."""
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    total = 0
    for dump in Path(tmp).glob("callgrind.out*"):
        if keep:
            shutil.copy(dump, Path(keep) / f"callgrind.{name}.{dump.name}")
        match = re.search(r"^totals:\s+(\d+)", dump.read_text(errors="replace"), re.M)
        if match:
            total = max(total, int(match.group(1)))
    return total


def instructions_per_task(
    variant: str, broker: str, endpoint: str, tasks: int, warmup: int, keep: str | None = None
) -> float:
    """Instructions per task; ``keep``: a directory to copy the callgrind dumps to (callgrind_annotate)."""
    client = redis.Redis.from_url(broker)
    client.flushdb()
    app = publisher(broker)
    base, extra = EXTRA_VARIANTS.get(variant, (variant, {}))
    prefix, env = variant_env(base, endpoint)
    env.update(extra)
    # Under valgrind the worker runs ~40x slower: the 5 s span export timer would cut the
    # batches small and count each request's fixed cost many times over. Spans go out in
    # full batches of 512 instead, as at full speed; metric exports (once a minute at full
    # speed, over ~60,000 tasks) are left out.
    env = {"OTEL_BSP_SCHEDULE_DELAY": "600000", "OTEL_METRIC_EXPORT_INTERVAL": "600000", **env}
    with tempfile.TemporaryDirectory() as tmp:
        worker = celery_worker(
            broker, env, "solo", prefix=[*_callgrind(tmp, children=True), *prefix, str(BIN / "python")]
        )
        try:
            publish(app, warmup)
            wait_done(client, warmup, worker, 600, poll=0.2)
            _counting_on(worker.pid)
            publish(app, tasks)
            wait_done(client, warmup + tasks, worker, 600, poll=0.2)
            total = _dump_total(worker.pid, tmp, keep, variant)
        finally:
            stop(worker)
    return total / tasks


DEFAULT_VARIANTS = "none,agensium-metrics,agensium-full,plain-otel"


def instructions_per_request(
    variant: str, broker: str, endpoint: str, path: str, requests: int, warmup: int = 600
) -> float:
    """Instructions per request of the FastAPI bench app under uvicorn (one process).

    The warm-up goes past the process's first span export (lazy imports, the first connection,
    fastencode's check: one-time costs); ``requests`` should be a multiple of 512 spans' worth.
    """
    import http.client

    from bench.fastapi_rps import WEB_VARIANTS

    bench_variant, extra = WEB_VARIANTS[variant]
    port = free_port()
    env = {
        "BENCH_VARIANT": bench_variant,
        "BENCH_BROKER_URL": broker,
        **extra,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
        "OTEL_METRIC_EXPORT_INTERVAL": "600000",
    }
    method = "POST" if path == "/enqueue" else "GET"
    with tempfile.TemporaryDirectory() as tmp:
        web = uvicorn(port, env, prefix=_callgrind(tmp), python=str(BIN / "python"))
        try:
            wait_port(port, timeout=300)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

            def hit(n: int) -> None:
                for _ in range(n):
                    conn.request(method, path)
                    conn.getresponse().read()

            hit(warmup)
            _counting_on(web.pid)
            hit(requests)
            total = _dump_total(web.pid, tmp)
        finally:
            stop(web)
    return total / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=512, help="a multiple of 256: whole span batches")
    parser.add_argument("--warmup", type=int, default=300, help="past the first span export (checked twice)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--keep", help="copy the callgrind dumps to this directory")
    parser.add_argument(
        "--web",
        action="store_true",
        help="FastAPI instead: instructions per GET /hello and POST /enqueue (--tasks each)",
    )
    args = parser.parse_args()
    if args.web:
        return main_web(args)
    variants = args.variants.split(",")
    results = {}
    with redis_server() as broker, otlp_sink() as endpoint:
        for variant in variants:
            results[variant] = instructions_per_task(variant, broker, endpoint, args.tasks, args.warmup, args.keep)
            print(f"  {variant:18} {results[variant] / 1e3:8.0f} k instructions/task", flush=True)
    base = results.get("none")
    print(f"\nInstructions per task, solo worker, {args.tasks} tasks (callgrind); {machine()}")
    for variant in variants:
        ratio = f"{base / results[variant]:.2f}" if base else "-"
        print(f"{variant:18} {results[variant] / 1e3:8.0f} k  ratio {ratio}")


def main_web(args: argparse.Namespace) -> None:
    variants = ["none", "agensium-full"] if args.variants == DEFAULT_VARIANTS else args.variants.split(",")
    results = {}
    with redis_server() as broker, otlp_sink() as endpoint:
        for path in ("/hello", "/enqueue"):
            for variant in variants:
                results[(variant, path)] = instructions_per_request(variant, broker, endpoint, path, args.tasks)
                print(
                    f"  {variant:18} {path:9} {results[(variant, path)] / 1e3:8.0f} k instructions/request", flush=True
                )
    print(f"\nInstructions per request, FastAPI under uvicorn, {args.tasks} requests (callgrind); {machine()}")
    for path in ("/hello", "/enqueue"):
        base = results.get(("none", path))
        for variant in variants:
            ratio = f"{base / results[(variant, path)]:.2f}" if base else "-"
            print(f"{path:9} {variant:18} {results[(variant, path)] / 1e3:8.0f} k  ratio {ratio}")


if __name__ == "__main__":
    main()
