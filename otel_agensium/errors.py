"""One error path for telemetry: it never fails the host, and it is never silent.

Every hook (signal handler, log filter, request finisher, the fast encoder's self-checks)
goes through here:

* :func:`guarded` wraps a whole hook: an exception is caught and reported, the task or
  request goes on;
* :func:`report`, from an ``except`` block, for code that cannot be wrapped whole (a
  wrapper around the host's own call must let the host's exceptions through);
* :func:`degraded`, for a fast path turned off because a check failed without an
  exception.

Each report is counted in :data:`HOOK_ERRORS`, logged once per hook and process (with
the traceback), and, once ``configure()`` set up metrics, added to the
``otel_agensium_telemetry_errors_total{hook}`` counter; failed exports are counted in
``otel_agensium_export_failures_total{signal}`` (:func:`count_export_failure`).

While the test suite runs (``AGENSIUM_RAISE_HOOK_ERRORS=true``, set by ``tests/conftest.py``
for the tests and every process they start) reported errors are raised instead, so a
broken hook fails a test rather than a line in a log.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

RAISE_ENV = "AGENSIUM_RAISE_HOOK_ERRORS"
TELEMETRY_ERRORS = "otel_agensium_telemetry_errors"  # a counter: _total in Prometheus
EXPORT_FAILURES = "otel_agensium_export_failures"  # a counter: _total in Prometheus

HOOK_ERRORS: Counter[str] = Counter()
_lock = threading.Lock()
_log = logging.getLogger("otel_agensium")
_counters: dict[str, Any] = {}  # instrument name -> counter, once metrics are set up


def raising() -> bool:
    """True while the test suite runs: reported errors are raised, not swallowed."""
    return os.environ.get(RAISE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def install_metrics(meter_provider: Any) -> None:
    """Create the two counters on ``configure()``'s meter provider."""
    from .version import __version__

    meter = meter_provider.get_meter("otel_agensium", __version__)
    _counters[TELEMETRY_ERRORS] = meter.create_counter(
        TELEMETRY_ERRORS,
        unit="{error}",
        description="Errors inside otel-agensium's own hooks (the host's work went on; telemetry is incomplete).",
    )
    _counters[EXPORT_FAILURES] = meter.create_counter(
        EXPORT_FAILURES, unit="{export}", description="OTLP exports that failed (the telemetry in them is lost)."
    )


def uninstall_metrics() -> None:
    _counters.clear()


def _add(name: str, attributes: dict[str, str]) -> None:
    counter = _counters.get(name)
    if counter is not None:
        try:
            counter.add(1, attributes)
        except Exception:  # noqa: BLE001, S110 - counting an error must not raise another
            pass


def count_export_failure(signal: str) -> None:
    _add(EXPORT_FAILURES, {"signal": signal})


def _count(name: str) -> bool:
    """Count one error of hook ``name``; True the first time in this process."""
    with _lock:
        HOOK_ERRORS[name] += 1
        first = HOOK_ERRORS[name] == 1
    _add(TELEMETRY_ERRORS, {"hook": name})
    return first


def report(name: str, *, reraise: bool = True) -> None:
    """Count a failure of hook ``name`` and log it the first time; call it from an ``except`` block.

    Under the test suite the exception being handled is raised again (unless ``reraise`` is
    false: the caller raises it itself once its other steps ran).
    """
    if _count(name):
        _log.warning("otel-agensium: hook %s failed; telemetry for it is incomplete", name, exc_info=True)
    if reraise and raising():
        raise  # noqa: PLE0704 - called from the caller's except block: its exception


def degraded(name: str, why: str) -> bool:
    """Count a fast path turned off by a failed check (no exception); False, or under the test suite, raise."""
    if _count(name):
        _log.warning("otel-agensium: %s: %s", name, why)
    if raising():
        raise RuntimeError(f"otel-agensium: {name}: {why} ({RAISE_ENV} is set)")
    return False


def guarded(func: F) -> F:
    """Run the hook; an exception is reported (see :func:`report`) and the hook returns None."""
    name = func.__qualname__

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception:  # noqa: BLE001 - the host's work comes first
            report(name)
            return None

    return wrapper  # type: ignore[return-value]
