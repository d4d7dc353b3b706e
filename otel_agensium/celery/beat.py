"""Celery beat, measured: per schedule entry when it was due, when it was sent, the lag, the sends; beat's liveness.

``opentelemetry-instrument celery -A myapp beat`` (or ``configure()`` in a process that
runs ``celery beat`` / ``-B``) connects :class:`BeatIntegration` to ``beat_init`` and
``beat_embedded_init``; at that signal the running scheduler's own ``apply_entry`` and
``tick`` are wrapped, on the instance, so any scheduler built on Celery's ``Scheduler``
is covered without patching Celery (tested with the default ``PersistentScheduler``). A
process that drives a scheduler itself calls :func:`instrument_scheduler`.

What is exported (labels ``entry`` and ``task_name``; at most :data:`MAX_ENTRIES` entries,
more are reported as ``other``):

* ``celery_beat_sends_total`` / ``celery_beat_send_errors_total``: an entry's message
  reached the broker (``after_task_publish``) / did not;
* ``celery_beat_entry_due_timestamp_seconds``: when the last sent run was due, from the
  entry's schedule and its ``last_run_at`` before the send (``remaining_estimate``);
* ``celery_beat_entry_last_sent_timestamp_seconds``: when that message was published
  (the ``agensium_sent_at`` header the worker also reads);
* ``celery_beat_entry_lag_seconds``: sent minus due, of the last send;
* ``celery_beat_entry_next_due_timestamp_seconds``: when the entry is due next (set for
  every entry when beat starts, then after each send). An entry is late when this is in
  the past: the ``CeleryBeatMissedRun`` alert;
* ``celery_beat_next_tick_timestamp_seconds``: when beat promised to wake up next (the
  end of the sleep its last ``tick()`` returned). In the past: beat is down or wedged
  (``CeleryBeatDown``).

Each message also carries ``agensium_beat_entry`` and ``agensium_beat_due_at`` headers.
On a Redis broker the same figures are written to one hash per app
(``agensium:beat:<app main>``), which ``otel-agensium doctor`` compares with the app's
``beat_schedule``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celery import signals
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from ..errors import guarded, report
from ..integration import Integration, connect
from .metrics import (
    BEAT_DUE,
    BEAT_LAG,
    BEAT_LAST_SENT,
    BEAT_NEXT_DUE,
    BEAT_NEXT_TICK,
    BEAT_SEND_ERRORS,
    BEAT_SENDS,
    celery_meter,
)
from .utils import OTHER, SENT_AT_HEADER

_log = logging.getLogger("otel_agensium.beat")

MAX_ENTRIES = 200
ENTRY_HEADER = "agensium_beat_entry"
DUE_HEADER = "agensium_beat_due_at"
STATUS_KEY = "agensium:beat:{app}"
BEAT_FIELD = "_beat"  # the hash field of beat itself (entry names are user-chosen; this one is ours)
STATUS_TTL = 7 * 24 * 3600


def status_key(app: Any) -> str:
    return STATUS_KEY.format(app=getattr(app, "main", None) or "celery")


def next_due(entry: Any, last_run_at: Any = None) -> float | None:
    """Unix time ``entry`` is due after a run at ``last_run_at`` (default: its own), or None."""
    try:
        remaining = entry.schedule.remaining_estimate(entry.last_run_at if last_run_at is None else last_run_at)
        return time.time() + remaining.total_seconds()
    except Exception:  # noqa: BLE001 - solar or custom schedules may not estimate; no due time then
        return None


@dataclass
class EntryState:
    task: str
    sends: int = 0
    errors: int = 0
    last_sent: float | None = None
    due: float | None = None
    next_due: float | None = None

    @property
    def lag(self) -> float | None:
        return None if self.last_sent is None or self.due is None else self.last_sent - self.due


class _Sending(threading.local):
    entry: str | None = None
    due: float | None = None
    next_due: float | None = None
    sent_at: float | None = None
    published: bool = False


class BeatIntegration(Integration):
    """Connects the beat signals; ``uninstall()`` restores every scheduler it wrapped."""

    name = "celery-beat"

    def __init__(self, meter_provider: MeterProvider | None, write_status: bool = True) -> None:
        super().__init__()
        self.meter_provider = meter_provider
        self.write_status = write_status
        self.entries: dict[str, EntryState] = {}
        self.next_tick: float | None = None
        self._lock = threading.Lock()
        self._sending = _Sending()
        self._counters: tuple[Any, Any] | None = None
        self._publish_hooks = False
        self._status: Any = None  # (redis client, key) on a Redis broker

    # -- install / uninstall -------------------------------------------------------
    def setup(self) -> None:
        connect(self, signals.beat_init, self._on_beat_init)
        connect(self, signals.beat_embedded_init, self._on_beat_init)
        self._publish_hooks = False

    def _hook_publish(self) -> None:
        """The publish signals, connected once a scheduler is instrumented: other processes pay nothing."""
        if not self._publish_hooks:
            self._publish_hooks = True
            connect(self, signals.before_task_publish, self._on_before_publish)
            connect(self, signals.after_task_publish, self._on_after_publish)

    # -- the scheduler -------------------------------------------------------------
    @guarded
    def _on_beat_init(self, sender: Any = None, **_: Any) -> None:
        scheduler = getattr(sender, "scheduler", None)
        if scheduler is not None:
            self.instrument(scheduler)

    def instrument(self, scheduler: Any) -> None:
        """Wrap ``scheduler.apply_entry`` and ``scheduler.tick`` (once per scheduler)."""
        if scheduler.__dict__.get("_agensium_beat"):
            return
        self._create_instruments()
        self._hook_publish()
        apply_entry, tick = scheduler.apply_entry, scheduler.tick

        def wrapped_apply_entry(entry: Any, producer: Any = None) -> Any:
            self._begin(entry)
            try:
                return apply_entry(entry, producer=producer)
            finally:
                self._end(scheduler, entry)

        def wrapped_tick(*args: Any, **kwargs: Any) -> Any:
            interval = tick(*args, **kwargs)
            self._ticked(scheduler, interval)
            return interval

        scheduler.apply_entry, scheduler.tick = wrapped_apply_entry, wrapped_tick
        scheduler._agensium_beat = True
        self.on_uninstall(lambda: _unwrap(scheduler), "scheduler unwrap")
        self._open_status(scheduler.app)
        self._seed(scheduler)

    @guarded
    def _seed(self, scheduler: Any) -> None:
        """Every entry's next due time as beat starts: an entry never sent yet can be late too."""
        for entry in list(scheduler.schedule.values())[: MAX_ENTRIES + 1]:
            state = self._state(entry)
            state.next_due = next_due(entry)
        self._write_status()

    @guarded
    def _begin(self, entry: Any) -> None:
        sending = self._sending
        sending.entry, sending.due, sending.sent_at, sending.published = entry.name, next_due(entry), None, False
        # tick() reserved the entry (last_run_at moved to now) just before apply_entry: due next after now.
        sending.next_due = next_due(entry, entry.schedule.now())

    @guarded
    def _end(self, scheduler: Any, entry: Any) -> None:
        sending = self._sending
        if sending.entry is None:
            return
        state = self._state(entry)
        attrs = {"entry": self._label(entry.name), "task_name": state.task}
        sends, errors = self._counters or (None, None)
        with self._lock:
            if sending.published and sending.sent_at is not None:
                state.sends += 1
                state.last_sent, state.due = sending.sent_at, sending.due
                if sends is not None:
                    sends.add(1, attrs)
            else:
                state.errors += 1
                if errors is not None:
                    errors.add(1, attrs)
            state.next_due = sending.next_due
        sending.entry = None
        self._write_status(entry.name)

    @guarded
    def _ticked(self, scheduler: Any, interval: Any) -> None:
        wait = float(interval) if isinstance(interval, (int, float)) and math.isfinite(interval) else 0.0
        self.next_tick = time.time() + max(0.0, wait)
        self._write_status(only="")  # beat's own field: one pipelined HSET per tick

    # -- the publish signals: in beat's thread only while it sends an entry -----------
    @guarded
    def _on_before_publish(self, headers: dict | None = None, **_: Any) -> None:
        sending = self._sending
        if sending.entry is None or headers is None:
            return
        sent_at = headers.get(SENT_AT_HEADER)
        if not isinstance(sent_at, (int, float)):
            sent_at = headers[SENT_AT_HEADER] = time.time()
        sending.sent_at = float(sent_at)
        headers[ENTRY_HEADER] = sending.entry
        if sending.due is not None:
            headers[DUE_HEADER] = sending.due

    @guarded
    def _on_after_publish(self, **_: Any) -> None:
        if self._sending.entry is not None:
            self._sending.published = True

    # -- state and labels ------------------------------------------------------------
    def _label(self, name: str) -> str:
        return name if name in self.entries and len(name) <= 200 and name.isprintable() else OTHER

    def _state(self, entry: Any) -> EntryState:
        with self._lock:
            state = self.entries.get(entry.name)
            if state is None:
                task = str(entry.task)
                state = EntryState(task if len(task) <= 200 and task.isprintable() else OTHER)
                if len(self.entries) < MAX_ENTRIES:
                    self.entries[entry.name] = state
            return state

    def snapshot(self) -> dict[str, EntryState]:
        with self._lock:
            return {name: EntryState(**vars(state)) for name, state in self.entries.items()}

    # -- metrics -------------------------------------------------------------------------
    def _create_instruments(self) -> None:
        if self.meter_provider is None or self._counters is not None:
            return
        meter = celery_meter(self.meter_provider)
        self._counters = (
            meter.create_counter(BEAT_SENDS, description="Messages beat sent for a schedule entry."),
            meter.create_counter(BEAT_SEND_ERRORS, description="Sends of a schedule entry that failed."),
        )
        for name, field, description in (
            (BEAT_LAST_SENT, "last_sent", "When beat last sent the entry (Unix time)."),
            (BEAT_DUE, "due", "When the entry's last sent run was due (Unix time)."),
            (BEAT_LAG, "lag", "Seconds between the last run's due time and its send."),
            (BEAT_NEXT_DUE, "next_due", "When the entry is due next (Unix time)."),
        ):
            meter.create_observable_gauge(name, callbacks=[self._observer(field)], unit="s", description=description)
        meter.create_observable_gauge(
            BEAT_NEXT_TICK,
            callbacks=[self._observe_tick],
            unit="s",
            description="When beat promised to wake up next (Unix time): its liveness.",
        )

    def _observer(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions | None = None) -> Iterable[Observation]:
            out = []
            for name, state in self.snapshot().items():
                value = getattr(state, field)
                if value is not None:
                    out.append(Observation(value, {"entry": name, "task_name": state.task}))
            return out

        return observe

    def _observe_tick(self, options: CallbackOptions | None = None) -> Iterable[Observation]:
        return [Observation(self.next_tick)] if self.next_tick is not None else []

    # -- the status hash for `otel-agensium doctor` -------------------------------------
    def _open_status(self, app: Any) -> None:
        if not self.write_status:
            return
        try:
            from .queues import CeleryQueues

            watched = CeleryQueues(app, (), timeout=1.0)
            if watched.is_redis:
                self._status = (watched.redis_client(), status_key(app))
        except Exception:  # noqa: BLE001 - no status for doctor; the metrics still work
            report("BeatIntegration._open_status")

    def _write_status(self, only: str | None = None) -> None:
        if self._status is None:
            return
        client, key = self._status
        fields = {BEAT_FIELD: json.dumps({"next_tick": self.next_tick, "at": time.time()})}
        for name, state in self.snapshot().items():
            if only is None or name == only:
                fields[name] = json.dumps({**vars(state), "lag": state.lag})
        try:
            with suppress_instrumentation():
                pipe = client.pipeline(transaction=False)
                pipe.hset(key, mapping=fields)
                pipe.expire(key, STATUS_TTL)
                pipe.execute()
        except Exception as exc:  # noqa: BLE001 - the broker is down: beat's own send fails and says so
            _log.debug("otel-agensium: beat status not written: %s", exc)


def _unwrap(scheduler: Any) -> None:
    for name in ("apply_entry", "tick", "_agensium_beat"):
        scheduler.__dict__.pop(name, None)


def read_status(client: Any, app: Any) -> dict[str, dict[str, Any]]:
    """The hash beat writes: {entry name or ``_beat``: figures}; empty when no beat reported."""
    raw = client.hgetall(status_key(app)) or {}
    out: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        try:
            out[name.decode() if isinstance(name, bytes) else name] = json.loads(value)
        except ValueError:
            continue
    return out


def instrument_scheduler(scheduler: Any, handle: Any = None) -> BeatIntegration | None:
    """Measure a scheduler a process drives itself (not through ``celery beat``); None when metrics are off."""
    from ..bootstrap import current

    handle = handle or current()
    if handle is None:
        return None
    integration = next((i for i in handle.integrations if isinstance(i, BeatIntegration)), None)
    if integration is None:
        integration = BeatIntegration(handle.meter_provider)
        integration.install()
        handle.integrations.append(integration)
    integration.instrument(scheduler)
    return integration
