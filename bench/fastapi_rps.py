"""FastAPI requests/s and p50/p99 latency: uninstrumented vs plain OpenTelemetry vs otel-agensium.

The app runs under uvicorn (one process); the load comes from ``wrk`` in a separate process
(``apt-get install wrk``). Variants alternate round by round. Endpoints: ``GET /hello`` (trivial)
and ``POST /enqueue`` (publishes a task to Redis).

    python -m bench.fastapi_rps [--seconds 5] [--rounds 3] [--connections 8]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

from bench.common import free_port, machine, median, otlp_sink, redis_server, stop, uvicorn, wait_port

# name -> (BENCH_VARIANT, extra environment)
WEB_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "none": ("none", {}),
    "plain-otel": ("plain", {}),
    "agensium-full": ("agensium", {}),
    "agensium-contrib": ("agensium", {"AGENSIUM_HTTP_INSTRUMENTATION": "contrib"}),
}
POST_LUA = 'wrk.method = "POST"'


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, seconds: int, connections: int, script: str | None) -> tuple[float, float, float]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if script:
        args[1:1] = ["-s", script]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    return rps, p50, p99


def post_script() -> str:
    script = "/tmp/agensium-bench-post.lua"
    with open(script, "w") as fh:
        fh.write(POST_LUA + "\n")
    return script


def one_run(
    variant: str, broker: str, endpoint: str, seconds: int, connections: int
) -> dict[str, tuple[float, float, float]]:
    """Start the app in ``variant``, load /hello then /enqueue; (req/s, p50 ms, p99 ms) per path."""
    port = free_port()
    bench_variant, extra = WEB_VARIANTS[variant]
    env = {
        "BENCH_VARIANT": bench_variant,
        "BENCH_BROKER_URL": broker,
        **extra,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": f"bench-web-{variant}",
    }
    web = uvicorn(port, env)
    out = {}
    try:
        wait_port(port)
        for path, lua in (("/hello", None), ("/enqueue", post_script())):
            wrk(f"http://127.0.0.1:{port}{path}", 1, connections, lua)  # warm-up
            out[path] = wrk(f"http://127.0.0.1:{port}{path}", seconds, connections, lua)
    finally:
        stop(web)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    with redis_server() as broker, otlp_sink() as endpoint:
        for round_no in range(args.rounds):
            order = list(WEB_VARIANTS) if round_no % 2 == 0 else list(reversed(WEB_VARIANTS))
            for variant in order:
                for path, res in one_run(variant, broker, endpoint, args.seconds, args.connections).items():
                    results.setdefault((variant, path), []).append(res)
                    print(f"  round {round_no + 1} {variant:16} {path:9} {res[0]:8.0f} req/s", flush=True)
    print(
        f"\nFastAPI under uvicorn (1 process), wrk -t1 -c{args.connections} -d{args.seconds}s, "
        f"{args.rounds} rounds; {machine()}"
    )
    print(f"{'variant':16} {'endpoint':9} {'req/s':>8} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7}")
    for path in ("/hello", "/enqueue"):
        base = median([r[0] for r in results[("none", path)]])
        for variant in WEB_VARIANTS:
            runs = results[(variant, path)]
            rps = median([r[0] for r in runs])
            print(
                f"{variant:16} {path:9} {rps:8.0f} {rps / base:6.2f} {median([r[1] for r in runs]):7.2f} "
                f"{median([r[2] for r in runs]):7.2f}"
            )


if __name__ == "__main__":
    main()
