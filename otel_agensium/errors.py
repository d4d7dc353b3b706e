"""Telemetry never fails the host: every hook runs under :func:`guarded`.

An exception inside one of otel-agensium's signal handlers or log filters is caught,
counted in :data:`HOOK_ERRORS` and logged once per hook and process; the task or request
goes on. Hooks that wrap the host's own call (the Redis command wrappers, the OTLP log
handler) catch around their own part only and call :func:`report`.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

HOOK_ERRORS: Counter[str] = Counter()
_lock = threading.Lock()
_log = logging.getLogger("otel_agensium")


def report(name: str) -> None:
    """Count a failure of hook ``name``; log it (with the traceback) the first time only.

    Call it from an ``except`` block, for hooks that cannot be wrapped whole (a wrapper
    around the host's own call must let the host's exceptions through).
    """
    with _lock:
        HOOK_ERRORS[name] += 1
        first = HOOK_ERRORS[name] == 1
    if first:
        _log.warning("otel-agensium: hook %s failed; telemetry for it is incomplete", name, exc_info=True)


def guarded(func: F) -> F:
    name = func.__qualname__

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception:  # noqa: BLE001 - the host's work comes first
            report(name)
            return None

    return wrapper  # type: ignore[return-value]
