"""Fork safety the SDK does not give: new locks in the child, and a metric state that starts empty.

Prefork pools (Celery's default) fork children from a parent that already holds the
SDK's providers. The SDK restarts its export threads in the child and gives the child
its own ``service.instance.id``; it does not renew every lock a fork copies, nor forget
the parent's cumulative metric state: otherwise every child would re-export the parent's
counts under its own identity and Prometheus would count them twice, see
:func:`reset_metric_state_after_fork`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider

_log = logging.getLogger("otel_agensium")


def renew_locks(obj: Any, *names: str) -> None:
    """Give ``obj`` new, unheld locks of the same kinds (a fork copies a lock held by another thread)."""
    for name in names:
        old = getattr(obj, name, None)
        if old is not None:
            setattr(obj, name, threading.RLock() if isinstance(old, _RLOCK_TYPE) else threading.Lock())


_RLOCK_TYPE = type(threading.RLock())


def reset_metric_state_after_fork(provider: MeterProvider) -> None:
    """Forget the cumulative state a forked child inherited from its parent, and unlock it.

    The SDK keeps per-instrument aggregations in each reader's storage; a child that
    kept them would export the parent's counts again under its own
    ``service.instance.id``. Storage entries are created lazily on the next
    measurement, so dropping them gives the child a clean start.

    A fork also copies locks that the parent's export thread held at that moment; in
    the child no thread will ever release them, and the first measurement or export
    would block forever (seen: a replacement child forked while the parent exported
    hung in ``task_postrun``). The locks the SDK does not renew itself are renewed here.
    """
    try:
        consumer = provider._measurement_consumer  # noqa: SLF001
        renew_locks(consumer, "_lock")
        for storage in consumer._reader_storages.values():  # noqa: SLF001
            renew_locks(storage, "_lock")
            storage._instrument_view_instrument_matches = {}  # noqa: SLF001
        for reader in list(consumer._reader_storages):  # noqa: SLF001 - this provider's readers
            renew_locks(reader, "_lock", "_export_lock")
        for meter in list(provider._meters.values()):  # noqa: SLF001
            renew_locks(meter, "_instrument_registration_lock")
    except AttributeError:  # an SDK whose internals moved: say so once, keep running
        _log.warning(
            "otel-agensium: cannot reset metric state after fork with this opentelemetry-sdk; "
            "forked children may repeat their parent's counts"
        )
