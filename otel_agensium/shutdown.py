"""One shutdown budget for the final flush of spans, metrics and logs (``AGENSIUM_SHUTDOWN_TIMEOUT``).

Left to themselves, the SDK's processors and readers flush one after the other and each
OTLP export spends its own timeout (``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s) in retries:
with the Collector unreachable a warm worker shutdown took 40 s (refused) to 55 s (a
socket that never answers). Here instead:

* a process's final flush gets one deadline (:meth:`Budget.begin`); the three providers
  shut down in parallel under it (:func:`run_until`), and every export still running at
  the deadline is left behind (:mod:`otel_agensium.exporters` sends each export from its
  own thread and stops waiting for it), every later one is not tried;
* what was not sent is counted per signal and said in one line (:func:`report`);
* in a prefork worker the budget is shared: once the main process has announced its
  shutdown (:func:`worker_stopping`, at Celery's ``worker_shutting_down`` and when the
  worker's blueprint stops, before its pool: ``celery.AnnounceShutdown``), each child that
  flushes on its way out writes the seconds it spent into a page of shared memory the
  children inherited, and the main process's own final flush gets what the slowest child
  left of the budget. The children flush side by side, so the whole warm shutdown spends
  the budget once, not once per process (the time Celery itself takes between the
  children's exits and the main's flush is not counted against it). A child recycled by
  ``--max-tasks-per-child`` or ``--max-memory-per-child`` has a budget of its own.
"""

from __future__ import annotations

import contextvars
import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

_log = logging.getLogger("otel_agensium")

SIGNALS = {"span": "span", "metric": "metric point", "log": "log record"}
# Once its own thread has seen the deadline, a provider's shutdown still closes its exporter.
GRACE_SECONDS = 0.5
# How often a thread waiting for an export looks whether the final flush has begun.
POLL_SECONDS = 0.1

# -- the budget a worker's processes share ------------------------------------------------
# Anonymous shared memory made at import, in the worker's main process before the pool
# forks: (shutdown announced 0/1, the most seconds one child's final flush has taken since).
_LAYOUT = struct.Struct("dd")
_SHARED = mmap.mmap(-1, _LAYOUT.size)
_announced_by = 0  # pid of the main process that announced its shutdown


def _shared() -> tuple[float, float]:
    return _LAYOUT.unpack(_SHARED[: _LAYOUT.size])


def worker_stopping() -> None:
    """The worker's main process announces a warm or cold shutdown to its children."""
    global _announced_by
    _announced_by = os.getpid()
    _SHARED[: _LAYOUT.size] = _LAYOUT.pack(1.0, _shared()[1])


def _share(seconds: float) -> float:
    """This process's share of ``seconds``: all of it, or what the slowest child left (a stopping worker's main)."""
    announced, spent = _shared()
    if not announced:
        return seconds  # no worker shutdown under way (a recycled child, a web app): a budget of its own
    if _announced_by == os.getpid():
        return max(0.0, seconds - spent)
    return seconds


def _record_spent(seconds: float) -> None:
    announced, spent = _shared()
    if announced and _announced_by != os.getpid() and seconds > spent:
        _SHARED[: _LAYOUT.size] = _LAYOUT.pack(1.0, seconds)


class Budget:
    """This process's final-flush deadline and what was dropped because of it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.deadline: float | None = None  # time.monotonic() value; None while the process runs
        self.seconds = 0.0
        self.started = 0.0
        self.dropped = dict.fromkeys(SIGNALS, 0)

    def begin(self, seconds: float) -> float:
        """Start the final flush (once per process) and return its deadline."""
        with self._lock:
            if self.deadline is None:
                self.started = time.monotonic()
                self.seconds = seconds
                self.deadline = self.started + _share(seconds)
            return self.deadline

    def finish(self) -> None:
        """The final flush is over: a worker's child tells the main process how long it took."""
        if self.deadline is not None:
            _record_spent(min(time.monotonic(), self.deadline) - self.started)

    def expired(self) -> bool:
        deadline = self.deadline
        return deadline is not None and time.monotonic() >= deadline

    def drop(self, signal: str, items: int) -> None:
        with self._lock:
            self.dropped[signal] = self.dropped.get(signal, 0) + items


BUDGET = Budget()


def _after_fork_in_child() -> None:
    BUDGET._lock = threading.Lock()  # noqa: SLF001 - a lock held by another thread at fork stays held
    BUDGET._reset()  # noqa: SLF001


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def count_items(batch: Any) -> int:
    """Spans or log records in a batch; data points in a ``MetricsData``."""
    resource_metrics = getattr(batch, "resource_metrics", None)
    if resource_metrics is not None:
        return sum(
            len(getattr(metric.data, "data_points", ()))
            for rm in resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        )
    try:
        return len(batch)
    except TypeError:
        return 0


def in_thread(target: Callable[[], Any], name: str) -> threading.Event:
    """Run ``target`` in a daemon thread with the caller's context; the event is set when it returns.

    The context matters: the SDK marks its export calls "suppress instrumentation" so that an
    instrumented HTTP client does not trace the export itself.
    """
    done = threading.Event()
    context = contextvars.copy_context()

    def run() -> None:
        try:
            context.run(target)
        except Exception:  # noqa: BLE001 - telemetry never raises into the app
            _log.debug("otel-agensium: %s failed", name, exc_info=True)
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    return done


def call_within_budget(
    call: Callable[[], Any],
    name: str,
    give_up: Callable[[], Any],
    stall_after: float | None = None,
    stalled: Callable[[float], Any] | None = None,
) -> list[Any]:
    """``[call()]`` run in a thread of its own; ``[]`` when it failed or was given up.

    The caller (an exporter's, from a processor's or reader's thread, never the app's)
    waits as long as the call takes while the process runs; once the final flush has
    begun, no longer than its deadline, then calls ``give_up`` (the exporter's shutdown
    ends its retry sleeps; a request on the wire runs out alone). After the deadline
    nothing is tried. A call still running ``stall_after`` seconds after it started
    (past its own timeouts: an endpoint that trickles bytes, a process stuck) is told to
    ``stalled(seconds)`` once, and still waited for: everything behind it waits too.
    """
    outcome: list[Any] = []
    if BUDGET.expired():
        return outcome
    started = time.monotonic()
    done = in_thread(lambda: outcome.append(call()), name)
    while not done.wait(POLL_SECONDS if BUDGET.deadline is None else max(0.0, BUDGET.deadline - time.monotonic())):
        if BUDGET.expired():
            give_up()
            break
        if stalled is not None and stall_after is not None and time.monotonic() - started >= stall_after:
            stalled(time.monotonic() - started)
            stalled = None
    return outcome[:1]


def run_until(deadline: float, jobs: dict[str, Callable[[], Any]]) -> list[str]:
    """Run the jobs in parallel, wait for them until ``deadline`` (monotonic); return those still running."""
    running = {name: in_thread(job, f"otel-agensium-{name}") for name, job in jobs.items()}
    for done in running.values():
        done.wait(max(0.0, deadline - time.monotonic()))
    return [name for name, done in running.items() if not done.is_set()]


def report(endpoint: str, unfinished: list[str]) -> str | None:
    """Say in one line what the final flush could not send within the budget (None: all sent)."""
    dropped = {signal: n for signal, n in BUDGET.dropped.items() if n}
    if not dropped and not unfinished:
        return None
    took = time.monotonic() - BUDGET.started
    what = (
        ", ".join(f"{n} {SIGNALS.get(signal, signal)}{'' if n == 1 else 's'}" for signal, n in dropped.items())
        or "nothing counted"
    )
    allowed = (BUDGET.deadline or BUDGET.started) - BUDGET.started
    share = "" if allowed >= BUDGET.seconds else f", {allowed:.1f} s of it left by the worker's children"
    line = (
        f"otel-agensium: final flush stopped after {took:.1f} s (AGENSIUM_SHUTDOWN_TIMEOUT="
        f"{BUDGET.seconds:g} s{share}): dropped {what} that could not be sent to {endpoint}"
    )
    if unfinished:
        line += f" ({', '.join(unfinished)} still busy, left behind)"
    _log.warning(line)
    return line
