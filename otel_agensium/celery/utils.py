"""Pure helpers for the Celery integration: no signals, no broker, testable alone."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

OTHER = "other"
UNKNOWN_QUEUE = "unknown"
MAX_LABEL_LENGTH = 200
# Header set by the publisher (before_task_publish) so the worker can measure queue wait.
SENT_AT_HEADER = "agensium_sent_at"


def queue_of(delivery_info: Mapping[str, Any] | None) -> str:
    """The queue a message was delivered from.

    With Celery's default direct routing the routing key is the queue name, on Redis
    and on RabbitMQ; ``task.queue`` is not used because it is usually unset.
    """
    if not delivery_info:
        return UNKNOWN_QUEUE
    queue = delivery_info.get("routing_key") or delivery_info.get("queue")
    return str(queue) if queue else UNKNOWN_QUEUE


def _registered(name: str) -> bool:
    """Whether the current Celery app (the worker's) has a task of that name.

    Registered names are bounded by the code, not by what arrives on the broker.
    """
    try:
        from celery._state import get_current_app

        return name in get_current_app().tasks
    except Exception:  # noqa: BLE001 - no app, or one that cannot finalize: treat as unknown
        return False


class BoundedLabels:
    """Attribute dicts for (task_name, queue): at most ``limit`` task names, plus the registered ones.

    Names past the limit, over-long names, names that are not printable and names that
    are not strings at all (a message header can hold an integer) are reported as
    ``other``, so a hostile or buggy producer cannot grow the number of series without
    bound. The worker's registered tasks keep their own value even past the limit, so
    a flood of unknown names cannot push real tasks into ``other``. The dicts are
    cached: building one per task costs more than the counter update itself.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._names: set[str] = set()
        self._exceptions: set[str] = set()
        self._attrs: dict[tuple[str, str], dict[str, str]] = {}
        self._lock = threading.Lock()

    def task_name(self, name: Any) -> str:
        if not name or not isinstance(name, str):
            return OTHER
        if name in self._names:
            return name
        if len(name) > MAX_LABEL_LENGTH or not name.isprintable():
            return OTHER
        with self._lock:
            if len(self._names) < self.limit:
                self._names.add(name)
                return name
        if _registered(name):
            with self._lock:
                self._names.add(name)
            return name
        return OTHER

    def exception_attributes(self, task_name: str | None, exception: BaseException | None) -> dict[str, str]:
        """(task_name, exception type name), at most ``limit`` distinct exception names."""
        exc = type(exception).__name__ if exception is not None else "unknown"
        key = (task_name if isinstance(task_name, str) else "", "\x00exc", exc)
        attrs = self._attrs.get(key)  # type: ignore[arg-type]
        if attrs is None:
            with self._lock:
                known = exc in self._exceptions or len(self._exceptions) < self.limit
                if known:
                    self._exceptions.add(exc)
            attrs = {"task_name": self.task_name(task_name), "exception": exc if known else OTHER}
            if len(self._attrs) < 4 * self.limit:
                self._attrs[key] = attrs  # type: ignore[index]
        return attrs

    def attributes(self, task_name: Any, queue: str) -> dict[str, str]:
        key = (task_name if isinstance(task_name, str) else "", queue)
        attrs = self._attrs.get(key)
        if attrs is None:
            name = self.task_name(task_name)
            if len(queue) > MAX_LABEL_LENGTH or not queue.isprintable():
                queue = OTHER
            attrs = {"task_name": name, "queue": queue}
            if len(self._attrs) < 4 * self.limit:
                self._attrs[key] = attrs
        return attrs
