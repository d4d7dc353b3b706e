"""Shared pieces of the benchmarks: processes on free ports, the variants, RSS, medians."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# name -> (run under opentelemetry-instrument?, extra environment)
VARIANTS: dict[str, tuple[bool, dict[str, str]]] = {
    "none": (False, {}),
    "plain-otel": (False, {"BENCH_VARIANT": "plain"}),
    "agensium-full": (True, {}),
    "agensium-metrics": (True, {"AGENSIUM_TRACES": "false", "AGENSIUM_LOGS": "false"}),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    import redis

    port = free_port()
    proc = spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield url
    finally:
        stop(proc, signal.SIGKILL)


@contextlib.contextmanager
def otlp_sink() -> Iterator[str]:
    port = free_port()
    proc = spawn([sys.executable, "-m", "bench.sink", str(port)])
    wait_port(port, 10, "OTLP sink")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def variant_env(variant: str, endpoint: str) -> tuple[list[str], dict[str, str]]:
    instrumented, extra = VARIANTS[variant]
    prefix = [str(BIN / "opentelemetry-instrument")] if instrumented else []
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": f"bench-{variant}",
        "OTEL_PYTHON_DISTRO": "agensium",
        "OTEL_PYTHON_CONFIGURATOR": "agensium",
        **extra,
    }
    return prefix, env


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its direct children (a prefork pool's processes)."""
    tick = os.sysconf("SC_CLK_TCK")

    def one(p: int) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    return one(pid) + sum(one(c) for c in children)


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}, Python {sys.version.split()[0]}"


def celery_worker(
    broker: str,
    env: dict[str, str],
    pool: str = "solo",
    concurrency: int | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.Popen:
    """A worker of bench.app on the ``bench`` queue, under ``prefix`` (opentelemetry-instrument, valgrind)."""
    conc = [] if concurrency is None else ["--concurrency", str(concurrency)]
    return spawn(
        [
            *prefix,
            str(BIN / "celery"),
            *["-A", "bench.app", "worker", "-Q", "bench", "--pool", pool, *conc],
            *["--without-gossip", "--without-mingle", "--without-heartbeat"],
        ],
        env={"BENCH_BROKER_URL": broker, **env},
    )


def uvicorn(
    port: int, env: dict[str, str], prefix: Sequence[str] = (), python: str = sys.executable
) -> subprocess.Popen:
    """bench.web_app under uvicorn (one process) on ``port``; wait for it with ``wait_port``."""
    return spawn(
        [
            *prefix,
            python,
            *["-m", "uvicorn", "bench.web_app:app", "--port", str(port)],
            *["--no-access-log", "--log-level", "warning"],
        ],
        env=env,
    )


def wait_port(port: int, timeout: float = 30, what: str = "uvicorn") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def publish(app, count: int) -> None:
    """Send ``count`` bench.incr tasks to the ``bench`` queue over one producer."""
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            app.send_task("bench.incr", queue="bench", producer=producer)


def wait_done(client, count: int, worker: subprocess.Popen, timeout: float, poll: float = 0.05) -> None:
    """Until the bench app's counter reaches ``count``; raises if the worker exits or time runs out."""
    deadline = time.monotonic() + timeout
    while int(client.get("bench:done") or 0) < count:
        if worker.poll() is not None:
            raise RuntimeError("the worker exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} tasks not done in {timeout:.0f}s")
        time.sleep(poll)
