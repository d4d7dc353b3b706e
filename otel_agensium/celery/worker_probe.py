"""Kubernetes probes for Celery workers that cost nothing: ``/healthz`` and ``/readyz`` from the main process.

``celery inspect ping`` as a probe starts a Python interpreter, loads the app and
broadcasts over the broker: seconds of CPU per call, and during a broker outage it
fails, so the kubelet restarts healthy workers that are only waiting for the broker.
With ``AGENSIUM_WORKER_PROBE_PORT`` set, every worker started under
``opentelemetry-instrument`` (or after ``configure()``) serves instead, from a thread of
its main process:

* ``GET /healthz`` (liveness): 200 while the worker's main thread is alive and, when it
  is connected to the broker, its event loop turned within ``AGENSIUM_WORKER_PROBE_STALL``
  seconds (prefork and other pools with an event loop: a timer of the loop stamps the time
  every second). While the broker is unreachable the loop is waiting in kombu's reconnect
  loop: that is not a reason to restart the process, and liveness stays 200. 503 once
  the worker is shutting down or its loop is wedged while connected.
* ``GET /readyz`` (readiness): 200 when the consumer runs, holds a broker connection and
  consumes at least one queue; 503 (with the reason) otherwise, e.g. while it reconnects.

Both answers are read from the worker's own state (no broker round trip, no lock the
worker holds), so a probe costs a few hundred microseconds of one thread. The server is
a stdlib ``ThreadingHTTPServer`` on a daemon thread: it never blocks the worker, and a
port that cannot be bound is one warning line, the worker runs on without probes.

Installed as two bootsteps: :class:`ProbeServer` (worker blueprint: starts and stops the
server) and :class:`LoopStamp` (consumer blueprint: the event-loop timer). They are added
at ``worker_init``, before Celery builds the worker's blueprint.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from celery import bootsteps

from ..errors import report
from ..integration import Integration, connect

_log = logging.getLogger("otel_agensium.worker_probe")

STAMP_EVERY = 1.0  # seconds between the event loop's time stamps


class ProbeState:
    """What the probes read: the worker, its consumer and the loop's last stamp (one per process)."""

    def __init__(self, stall: float = 60.0) -> None:
        self.stall = stall
        self.worker: Any = None
        self.loop_stamp: float | None = None  # time.monotonic() of the loop's last timer
        self.has_loop = False
        self.stopping = False

    # -- the answers --------------------------------------------------------------------
    def consumer_state(self) -> tuple[bool, str]:
        """(ready, reason) from the consumer's own attributes."""
        from celery.bootsteps import RUN

        consumer = getattr(self.worker, "consumer", None)
        if self.stopping or consumer is None:
            return False, "worker is shutting down" if self.stopping else "consumer not started"
        blueprint = getattr(consumer, "blueprint", None)
        if blueprint is None or blueprint.state != RUN:
            return False, "consumer not running (starting or reconnecting)"
        connection = getattr(consumer, "connection", None)
        if connection is None or not getattr(connection, "connected", False):
            return False, "no broker connection (reconnecting)"
        task_consumer = getattr(consumer, "task_consumer", None)
        queues = [q.name for q in (getattr(task_consumer, "queues", None) or ())]
        if not queues:
            return False, "not consuming any queue"
        return True, f"consuming {len(queues)} queue(s)"

    def live(self) -> tuple[int, dict[str, Any]]:
        body: dict[str, Any] = {"status": "alive"}
        if self.stopping or not threading.main_thread().is_alive():
            return 503, {"status": "stopping"}
        if self.has_loop and self.loop_stamp is not None:
            age = time.monotonic() - self.loop_stamp
            body["loop_age_s"] = round(age, 3)
            connected, _ = self.consumer_state()
            if connected and age > self.stall:
                return 503, {
                    "status": "stalled",
                    "loop_age_s": round(age, 3),
                    "error": f"connected, but the event loop has not turned for {age:.0f} s",
                }
        return 200, body

    def ready(self) -> tuple[int, dict[str, Any]]:
        ok, reason = self.consumer_state()
        return (200 if ok else 503), {"status": "ready" if ok else "not ready", "reason": reason}


class _Handler(BaseHTTPRequestHandler):
    state: ProbeState  # set on the subclass the server uses

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                status, body = self.state.live()
            elif path == "/readyz":
                status, body = self.state.ready()
            else:
                status, body = 404, {"error": "not found; try /healthz or /readyz"}
        except Exception as exc:  # noqa: BLE001 - a probe answers, it never raises into the worker
            status, body = 500, {"error": type(exc).__name__}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:  # probes every few seconds: no access log
        return None


class ProbeServer(bootsteps.StartStopStep):
    """Worker bootstep: serves the probes of this worker on ``host:port`` from a daemon thread."""

    label = "otel-agensium probes"
    requires = ("celery.worker.components:Timer",)
    host = "0.0.0.0"
    port = 0
    state: ProbeState

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.server: ThreadingHTTPServer | None = None
        self.state.worker = w
        self.state.stopping = False

    def start(self, w: Any) -> None:
        handler = type("ProbeHandler", (_Handler,), {"state": self.state})
        try:
            server = ThreadingHTTPServer((self.host, self.port), handler)
        except OSError as exc:
            _log.warning(
                "otel-agensium: AGENSIUM_WORKER_PROBE_PORT=%s: cannot listen on %s (%s); worker probes off",
                self.port,
                self.host,
                exc.strerror or exc,
            )
            return
        server.daemon_threads = True
        self.server = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="otel-agensium-probes", daemon=True
        ).start()
        _log.info("otel-agensium: worker probes on http://%s:%d/healthz and /readyz", self.host, self.port)

    def stop(self, w: Any) -> None:
        self.state.stopping = True

    def shutdown(self, w: Any) -> None:
        self.state.stopping = True
        server, self.server = self.server, None
        if server is not None:
            threading.Thread(target=server.shutdown, daemon=True).start()  # never wait on it while exiting


class LoopStamp(bootsteps.StartStopStep):
    """Consumer bootstep: a timer of the event loop stamps the time every second (pools with a hub)."""

    label = "otel-agensium loop stamp"
    state: ProbeState

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.entry: Any = None

    def start(self, c: Any) -> None:
        hub = getattr(c, "hub", None)
        if hub is None:  # solo/threads pools: the main thread runs tasks; no loop to watch
            return
        self.state.has_loop = True
        self.state.loop_stamp = time.monotonic()
        if self.entry is None:
            self.entry = hub.call_repeatedly(STAMP_EVERY, self._stamp)

    def _stamp(self) -> None:
        self.state.loop_stamp = time.monotonic()

    def stop(self, c: Any) -> None:
        if self.entry is not None:
            try:
                self.entry.cancel()
            except Exception:  # noqa: BLE001 - the timer is going away with the loop
                pass
            self.entry = None


def add_probe_steps(app: Any, host: str, port: int, stall: float) -> ProbeState:
    """Add the two bootsteps to ``app`` (call before the worker builds its blueprint, e.g. at ``worker_init``)."""
    state = ProbeState(stall)
    server = type("ProbeServer", (ProbeServer,), {"host": host, "port": port, "state": state})
    stamp = type("LoopStamp", (LoopStamp,), {"state": state})
    app.steps["worker"].add(server)
    app.steps["consumer"].add(stamp)
    return state


class ProbeIntegration(Integration):
    """Adds the probe bootsteps to every worker this process starts (``worker_init``).

    With a meter provider, readiness is also exported as ``celery_worker_ready{worker}``
    (1 or 0, from the main process only), so a dashboard shows what the kubelet sees.
    """

    name = "celery-worker-probes"

    def __init__(self, host: str, port: int, stall: float, meter_provider: Any = None) -> None:
        super().__init__()
        self.host, self.port, self.stall = host, port, stall
        self.meter_provider = meter_provider
        self.state: ProbeState | None = None

    def setup(self) -> None:
        from celery import signals

        connect(self, signals.worker_init, self._on_worker_init)

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        try:
            if self.state is None and sender is not None:
                self.state = add_probe_steps(sender.app, self.host, self.port, self.stall)
                if self.meter_provider is not None:
                    self._ready_gauge(str(getattr(sender, "hostname", "") or "unknown"))
        except Exception:  # noqa: BLE001 - the worker starts without probes
            report("ProbeIntegration._on_worker_init")

    def _ready_gauge(self, hostname: str) -> None:
        from .metrics import WORKER_READY, celery_meter

        main_pid = os.getpid()
        worker = hostname if len(hostname) <= 200 and hostname.isprintable() else "other"
        state = self.state

        def observe(options: Any = None) -> list[Any]:
            from opentelemetry.metrics import Observation

            if os.getpid() != main_pid or state is None:  # prefork children: not theirs to report
                return []
            return [Observation(1 if state.consumer_state()[0] else 0, {"worker": worker})]

        meter = celery_meter(self.meter_provider)
        meter.create_observable_gauge(
            WORKER_READY,
            callbacks=[observe],
            unit="{worker}",
            description="1 while the worker consumes from the broker (its /readyz).",
        )
