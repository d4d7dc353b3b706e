"""Telemetry never fails the host: every hook runs under :func:`guarded`.

An exception inside one of otel-agensium's signal handlers or log filters is caught,
counted in :data:`HOOK_ERRORS` and logged once per hook; the task or request goes on.
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


def guarded(func: F) -> F:
    name = func.__qualname__

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception:  # noqa: BLE001 - the host's work comes first
            with _lock:
                HOOK_ERRORS[name] += 1
                first = HOOK_ERRORS[name] == 1
            if first:
                _log.warning("otel-agensium: hook %s failed; telemetry for it is incomplete", name,
                             exc_info=True)
            return None

    return wrapper  # type: ignore[return-value]
