"""Real processes for the tests: redis-server, Celery workers, uvicorn. Free ports, bounded waits."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLI = str(BIN / "otel-agensium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Listener:
    """A TCP endpoint on a free port whose accepted connections go to :meth:`_handle`."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            self.accepted.append(conn)
            self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._sock.close()
        for conn in self.accepted:
            conn.close()


class BlackHole(_Listener):
    """A TCP endpoint that accepts connections and never reads or answers (a hung Collector, a partition)."""

    def _handle(self, conn: socket.socket) -> None:
        pass  # held open, never read


class Trickle(_Listener):
    """A TCP endpoint that reads the request, then answers one byte every ``every`` seconds, forever:
    a client's read timeout (time between bytes) never fires, so the request never ends."""

    def __init__(self, every: float = 0.3) -> None:
        self.every = every
        super().__init__()

    def _handle(self, conn: socket.socket) -> None:
        threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        conn.settimeout(1.0)
        with contextlib.suppress(OSError):
            conn.recv(65536)
        while not self._closed.wait(self.every):
            try:
                conn.sendall(b"H")
            except OSError:
                return


def refusing_endpoint() -> str:
    """A free port nobody listens on: every connection is refused."""
    return f"http://127.0.0.1:{free_port()}"


def run_json(
    args: list[str], env: dict[str, str] | None = None, *, inherit: bool = True, timeout: float = 60.0
) -> tuple[Any, str]:
    """Run a short command from the repository root; it must exit 0. The JSON of its last stdout
    line, and its stderr. ``inherit=False``: only ``env`` (and PYTHONPATH), not this environment."""
    full_env = {**(os.environ if inherit else {}), "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    drop: tuple[str, ...] = ("OTEL_", "AGENSIUM_"),
) -> subprocess.CompletedProcess:
    """The ``otel-agensium`` command from the repository root, without this environment's variables
    that start with ``drop`` (the settings), plus ``env``; output captured as text."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return subprocess.run(
        [CLI, *args],
        env={**clean, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def doctor_json(app: str, env: dict[str, str], *extra: str) -> dict[str, dict]:
    """``otel-agensium doctor -A app --json`` (exit 1 on a failed check is an answer too): check -> result."""
    result = subprocess.run(
        [sys.executable, "-m", "otel_agensium.cli", "doctor", "-A", app, "--json", *extra],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return {c["check"]: c for c in json.loads(result.stdout)}


class Proc:
    """A subprocess in its own session whose output is collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, name: str = "proc") -> None:
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.name = name
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if len(self.lines) < 200_000:
                self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in list(self.lines)):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output[-4000:]}")
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no line with {text!r} within {timeout}s:\n{self.output[-4000:]}")

    def wait_http_ok(self, url: str, timeout: float = 30.0) -> None:
        """Poll ``url`` until it answers 200; fail at once with the output if the process exited."""
        import httpx

        from tests.otlp_receiver import wait_for

        def ok() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.output[-3000:]}")
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ok, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the main process only (as Kubernetes or systemd KillMode=mixed do); kill the group on timeout."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers of the group (none after a clean exit)
        self._reader.join(5)
        return self.proc.returncode


class RedisServer:
    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = Proc(args, name="redis-server")
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                return self
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise AssertionError("redis-server did not start:\n" + self.proc.output) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGKILL, timeout=10)
            self.proc = None


def celery_worker(
    app: str,
    broker: str,
    otlp: str,
    queues: str,
    *,
    name: str,
    concurrency: int = 2,
    pool: str = "prefork",
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
) -> Proc:
    args = [
        str(BIN / "opentelemetry-instrument"),
        str(BIN / "celery"),
        "-A",
        app,
        "worker",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "-Q",
        queues,
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "INFO",
        *(extra_args or []),
    ]
    worker_env = {
        "TEST_BROKER_URL": broker,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
        "OTEL_SERVICE_NAME": f"worker-{name}",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
        "OTEL_PYTHON_DISTRO": "agensium",
        "OTEL_PYTHON_CONFIGURATOR": "agensium",
        **(env or {}),
    }
    proc = Proc(args, env=worker_env, name=f"worker {name}")
    proc.wait_for_line("ready.", timeout=60)
    return proc


@contextlib.contextmanager
def running(proc: Proc, sig: int = signal.SIGTERM) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop(sig)


def uvicorn_app(
    app: str,
    broker: str,
    otlp: str,
    *,
    service: str,
    name: str = "uvicorn",
    env: dict[str, str] | None = None,
    health: str | None = None,
) -> tuple[Proc, str]:
    """``app`` (module:attribute) under uvicorn on a free port, sending its telemetry to ``otlp``.

    Waits until uvicorn says it is running, or, with ``health`` (a path), until that path answers
    200; stops the process if it does not start. Returns it and its base URL.
    """
    port = free_port()
    proc = Proc(
        [str(BIN / "python"), "-m", "uvicorn", app, "--port", str(port), "--host", "127.0.0.1"],
        env={
            "TEST_BROKER_URL": broker,
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
            "OTEL_SERVICE_NAME": service,
            **(env or {}),
        },
        name=name,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        if health is None:
            proc.wait_for_line("Uvicorn running", timeout=60)
        else:
            proc.wait_http_ok(base + health, timeout=30)
    except BaseException:
        proc.stop()
        raise
    return proc, base


def monitor_args(app: str, queues: str, *extra: str) -> list[str]:
    """The command line of ``otel-agensium monitor`` for ``app`` watching ``queues``."""
    return [sys.executable, "-m", "otel_agensium.cli", "monitor", "-A", app, "--queues", queues, *extra]
