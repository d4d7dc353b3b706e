"""Blocking checks run off the caller's thread, with a timeout and a short reuse of the answer.

:class:`Probe` is what the health router, the queue gauges and ``otel-agensium doctor``
wait on: a broker or Redis call never blocks an event loop or a metric collection for
longer than the caller's own timeout, and a burst of callers costs one round trip.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, NamedTuple

from opentelemetry.instrumentation.utils import suppress_instrumentation


class Sample(NamedTuple):
    value: Any
    at: float  # time.monotonic() when the check started


class Probe:
    """A blocking check run in a daemon thread: one run at a time, its answer reused for ``ttl`` s.

    Callers wait on the shared run with their own timeout (:meth:`get` in threads,
    :meth:`wait` in async code). A run that hangs past every timeout keeps its one
    daemon thread; no second thread is started for the same check until it ends, so a
    burst of callers (or probes) never piles up threads or connections. The answer,
    success or error, is reused for ``ttl`` seconds after the run ends: a burst costs
    one round trip even while the dependency is down, and an old success is never
    served once a newer run failed. ``Sample.at`` tells when the answer's run started.
    """

    def __init__(self, check: Callable[[], Any], ttl: float = 1.0, name: str = "probe") -> None:
        self.check = check
        self.ttl = ttl
        self.name = name
        self._lock = threading.Lock()
        self._done: Future[Sample] | None = None
        self._done_at = 0.0  # when the run of _done ended
        self._done_started = 0.0
        self._running: Future[Sample] | None = None

    def future(self) -> Future[Sample]:
        with self._lock:
            if self._done is not None and time.monotonic() - self._done_at <= self.ttl:
                return self._done
            if self._running is not None and not self._running.done():
                return self._running
            future: Future[Sample] = Future()
            future.set_running_or_notify_cancel()  # nobody can cancel it now; waiters time out instead
            self._running = future
        threading.Thread(target=self._run, args=(future,), name=f"otel-agensium-{self.name}", daemon=True).start()
        return future

    def _run(self, future: Future[Sample]) -> None:
        started = time.monotonic()
        error: BaseException | None = None
        try:
            with suppress_instrumentation():  # a probe's own broker/Redis calls are not traced
                value = self.check()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiters
            error, value = exc, None
        with self._lock:
            if started >= self._done_started:  # never replace a newer answer with an older one
                self._done, self._done_started, self._done_at = future, started, time.monotonic()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(Sample(value, started))

    def get(self, timeout: float) -> Sample:
        """The current sample; raises the check's error, or ``TimeoutError`` after ``timeout`` s."""
        return self.future().result(timeout)

    async def wait(self, timeout: float) -> Sample:
        """:meth:`get` for a running asyncio loop: the loop never blocks."""
        return await asyncio.wait_for(asyncio.wrap_future(self.future()), timeout)
