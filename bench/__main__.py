"""Every overhead ratio in one run: ``python -m bench`` (a few minutes); writes bench/results.md.

* Celery, solo pool and prefork pool (``--concurrency 2``): a no-op task doing one Redis INCR,
  pre-filled queue, real Redis, real worker, exports to a live local OTLP/HTTP sink. Variants
  ``none``, ``plain-otel`` (SDK defaults + contrib Celery and Redis instrumentors),
  ``agensium-full`` (traces + metrics + logs, 100 % sampling) and ``agensium-metrics``
  (traces and logs off). Tasks/s between the 25 % and 100 % marks, and the worker's CPU time
  per task (user + system, pool children included), which moves less with the machine's load.
* FastAPI under uvicorn, ``wrk -t1 -c8``: ``GET /hello`` and ``POST /enqueue``; variants
  ``none``, ``plain-otel``, ``agensium-full``.
* Where the per-task time goes (bench/parts.py): microseconds per task of each part.

Variants alternate round by round (A B C, then C B A, ...) so that drift in the machine's
load hits every variant alike; each figure is the median of the rounds. The targets:
Celery >= 0.90 with full telemetry, >= 0.97 metrics only, FastAPI >= 0.80.

* With ``--instructions``: instructions per task (Celery solo) and per request (FastAPI),
  counted by valgrind's callgrind (bench/instructions.py), which the machine's load does not move.

    python -m bench [--rounds 3] [--tasks 2000] [--seconds 4] [--instructions] [--output bench/results.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import celery_throughput, fastapi_rps, instructions
from bench.common import ROOT, load_average, machine, median, otlp_sink, redis_server

CELERY_VARIANTS = ["none", "plain-otel", "agensium-full", "agensium-metrics"]
WEB_VARIANTS = ["none", "plain-otel", "agensium-full"]
TARGETS = {"agensium-full": 0.90, "agensium-metrics": 0.97}
WEB_TARGET = 0.80


def alternate(variants: list[str], rounds: int):
    for round_no in range(rounds):
        for variant in variants if round_no % 2 == 0 else list(reversed(variants)):
            yield round_no, variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results.md"))
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count instructions per task / request under callgrind (about 3 more minutes)",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed for the FastAPI figures: apt-get install wrk")
    started = time.monotonic()
    load_before = load_average()
    celery: dict[tuple[str, str], list[tuple[float, float]]] = {}
    web: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    with redis_server() as broker, otlp_sink() as endpoint:
        for pool, concurrency in (("solo", 1), ("prefork", 2)):
            for round_no, variant in alternate(CELERY_VARIANTS, args.rounds):
                res = celery_throughput.one_run(variant, broker, endpoint, args.tasks, pool, concurrency)
                celery.setdefault((pool, variant), []).append(res)
                print(
                    f"  celery {pool:7} round {round_no + 1} {variant:17} {res[0]:6.0f} tasks/s "
                    f"{res[1]:6.0f} us CPU/task",
                    flush=True,
                )
        for round_no, variant in alternate(WEB_VARIANTS, args.rounds):
            for path, res in fastapi_rps.one_run(variant, broker, endpoint, args.seconds, 8).items():
                web.setdefault((variant, path), []).append(res)
                print(f"  fastapi round {round_no + 1} {variant:17} {path:9} {res[0]:6.0f} req/s", flush=True)
        # In a process of its own: it configures otel-agensium, this process publishes uninstrumented.
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.parts",
                "--json",
                "--broker",
                broker,
                "--endpoint",
                endpoint,
                "--rounds",
                str(max(10, 4 * args.rounds)),
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        ).stdout
        part_us = json.loads(out.strip().splitlines()[-1])
        counts: dict[tuple[str, str], float] = {}
        if args.instructions:
            for variant in ("none", "agensium-metrics", "agensium-full"):
                counts[("celery", variant)] = instructions.instructions_per_task(variant, broker, endpoint, 512, 300)
                print(f"  instructions celery {variant:17} {counts[('celery', variant)] / 1e3:6.0f} k/task", flush=True)
            for path in ("/hello", "/enqueue"):
                for variant in ("none", "agensium-full"):
                    count = instructions.instructions_per_request(variant, broker, endpoint, path, 512)
                    counts[(path, variant)] = count
                    print(
                        f"  instructions {path:9} {variant:17} {counts[(path, variant)] / 1e3:6.0f} k/request",
                        flush=True,
                    )
    text = report(args, celery, web, part_us, counts, load_before, load_average(), time.monotonic() - started)
    print("\n" + text)
    Path(args.output).write_text(text)
    print(f"written to {args.output}")


def report(args, celery, web, part_us, counts, load_before: str, load_after: str, seconds: float) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark results (`python -m bench`)",
        "",
        f"{now}; {machine()}; load average {load_before} before, {load_after} after; "
        f"{args.rounds} rounds, variants alternated; run took {seconds / 60:.1f} min.",
        "",
        f"## Celery: no-op task with one Redis INCR, {args.tasks} tasks per run",
        "",
        "| pool | variant | tasks/s | ratio | target | worker CPU us/task | CPU ratio |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for pool in ("solo", "prefork"):
        base_tps = median([r[0] for r in celery[(pool, "none")]])
        base_cpu = median([r[1] for r in celery[(pool, "none")]])
        for variant in CELERY_VARIANTS:
            tps = median([r[0] for r in celery[(pool, variant)]])
            cpu = median([r[1] for r in celery[(pool, variant)]])
            target = TARGETS.get(variant)
            verdict = "" if target is None else f">= {target:.2f}: {'met' if tps / base_tps >= target else 'NOT met'}"
            lines.append(
                f"| {pool} | {variant} | {tps:.0f} | **{tps / base_tps:.2f}** | {verdict} | {cpu:.0f} | "
                f"{base_cpu / cpu:.2f} |"
            )
    lines += [
        "",
        f"## FastAPI under uvicorn, wrk -t1 -c8 -d{args.seconds}s",
        "",
        "| endpoint | variant | req/s | ratio | target | p50 ms | p99 ms |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for path in ("/hello", "/enqueue"):
        base = median([r[0] for r in web[("none", path)]])
        for variant in WEB_VARIANTS:
            runs = web[(variant, path)]
            rps = median([r[0] for r in runs])
            verdict = ""
            if variant == "agensium-full" and path == "/hello":
                verdict = f">= {WEB_TARGET:.2f}: {'met' if rps / base >= WEB_TARGET else 'NOT met'}"
            lines.append(
                f"| {path} | {variant} | {rps:.0f} | **{rps / base:.2f}** | {verdict} | "
                f"{median([r[1] for r in runs]):.2f} | {median([r[2] for r in runs]):.2f} |"
            )
    lines += [
        "",
        "## Where a worker's per-task telemetry time goes (bench/parts.py, minimum of rounds)",
        "",
        "| part | us per task |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {us:.1f} |" for name, us in part_us.items()]
    if counts:
        lines += [
            "",
            "## Instructions (callgrind; steady whatever the machine's load; waiting not included)",
            "",
            "| what | variant | k instructions | ratio to none |",
            "| --- | --- | ---: | ---: |",
        ]
        for (what, variant), count in counts.items():
            label = "Celery solo, per task" if what == "celery" else f"FastAPI {what}, per request"
            lines.append(f"| {label} | {variant} | {count / 1e3:.0f} | {counts[(what, 'none')] / count:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
