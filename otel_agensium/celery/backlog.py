"""The backlog the queue length hides: delivered-not-acknowledged, held for an ETA, age of the oldest waiting.

``celery_queue_length`` counts the messages still in the broker's lists. A prefetching
worker has already taken more (``worker_prefetch_multiplier`` x concurrency), and a worker
keeps every task with an ETA or countdown until it is due: neither is in any list, so
a scaler that reads the list length sees an empty queue while work piles up in the
workers (KEDA #6719, celery-exporter #218, Flower #1173). On Redis, kombu keeps each
delivered message in one hash until it is acknowledged (``unacked``, field = delivery
tag, value = ``[message, exchange, routing_key]``, with ``global_keyprefix`` in front);
this module reads that hash and the tails of the queue lists:

* :meth:`RedisBacklog.unacked`: per queue (the routing key the message was delivered
  with), the messages delivered and not yet acknowledged, and how many of them carry an
  ETA still in the future (held by a worker's timer, not runnable yet). With Celery's
  default early acknowledgement a running task is already acknowledged, so the rest are
  prefetched tasks waiting for a pool slot; with ``task_acks_late`` running ones too.
  The hash is read with HSCAN in batches, at most :data:`MAX_UNACKED` entries per read.
* :meth:`RedisBacklog.oldest_ages`: per queue, the age of the oldest waiting message:
  the last element of every priority list (kombu LPUSHes, workers BRPOP), read in one
  pipelined round trip. Its age is ``now - agensium_sent_at`` when the publisher runs
  otel-agensium (the header it adds to every message). Otherwise the message has no
  publish time at all (Celery's protocol carries none), and the age is measured from
  the first collection that saw that message at the tail: a lower bound, exact to one
  collection interval, that starts over when the monitor restarts.
* :func:`worker_concurrency`: each worker's pool size (``inspect stats``: ``pool``
  ``max-concurrency``), for the load figure ``backlog / concurrency of the workers that
  consume the queue``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .utils import SENT_AT_HEADER

_log = logging.getLogger("otel_agensium.backlog")

# Entries of the unacked hash read per collection, at most (HSCAN batches of SCAN_BATCH).
MAX_UNACKED = 100_000
SCAN_BATCH = 1000
# Redis broker defaults (kombu.transport.redis.Channel).
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
VISIBILITY_TIMEOUT = 3600.0


def parse_eta(value: Any) -> float | None:
    """Unix time of a Celery ``eta`` header (ISO 8601; naive means UTC), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@dataclass
class Unacked:
    """Delivered, not yet acknowledged messages per queue; ``eta_held`` of them wait for a future ETA."""

    unacked: Counter[str] = field(default_factory=Counter)
    eta_held: Counter[str] = field(default_factory=Counter)
    # (queue, task name, seconds from delivery to ETA) of held messages whose ETA is further than
    # the visibility timeout from their delivery: kombu will deliver them again (filled on request).
    beyond_visibility: list[tuple[str, str, float]] = field(default_factory=list)
    truncated: bool = False


class RedisBacklog:
    """Reads kombu's Redis structures for a broker; every call blocks (run it in a Probe)."""

    def __init__(self, client: Any, transport_options: dict[str, Any] | None = None) -> None:
        options = dict(transport_options or {})
        self.client = client
        self.prefix = str(options.get("global_keyprefix") or "")
        self.unacked_key = self.prefix + str(options.get("unacked_key") or UNACKED_KEY)
        self.unacked_index_key = self.prefix + str(options.get("unacked_index_key") or UNACKED_INDEX_KEY)
        self.visibility_timeout = float(options.get("visibility_timeout") or VISIBILITY_TIMEOUT)
        self.sep = options.get("sep")
        self.steps = options.get("priority_steps")
        self._first_seen: dict[str, dict[str, float]] = {}  # queue -> {message id at a tail: first seen}
        self._lock = threading.Lock()
        self._truncation_logged = False

    # -- delivered, not acknowledged ----------------------------------------------------
    def unacked(self, now: float | None = None, delivery_times: bool = False) -> Unacked:
        """Scan the unacked hash; with ``delivery_times`` also find ETAs beyond the visibility timeout."""
        now = time.time() if now is None else now
        out = Unacked()
        delivered: dict[str, float] = {}
        if delivery_times:
            delivered = {
                (t.decode() if isinstance(t, bytes) else t): s
                for t, s in self.client.zrange(self.unacked_index_key, 0, -1, withscores=True)
            }
        cursor, seen = 0, 0
        while True:
            cursor, batch = self.client.hscan(self.unacked_key, cursor, count=SCAN_BATCH)
            for tag, raw in batch.items():
                seen += 1
                self._count(out, tag, raw, now, delivered)
            if not cursor:
                break
            if seen >= MAX_UNACKED:
                out.truncated = True
                if not self._truncation_logged:
                    self._truncation_logged = True
                    _log.warning(
                        "otel-agensium: more than %d unacked messages in %s; only that many are counted",
                        MAX_UNACKED,
                        self.unacked_key,
                    )
                break
        return out

    def _count(self, out: Unacked, tag: Any, raw: Any, now: float, delivered: dict[str, float]) -> None:
        try:
            message, _exchange, routing_key = json.loads(raw)
            headers = message.get("headers") or {}
        except (ValueError, TypeError, AttributeError):
            return  # not a kombu entry
        queue = routing_key or ((message.get("properties") or {}).get("delivery_info") or {}).get("routing_key")
        if not isinstance(queue, str) or not queue:
            return
        out.unacked[queue] += 1
        eta = parse_eta(headers.get("eta"))
        if eta is None:
            return
        if eta > now:
            out.eta_held[queue] += 1
        tag = tag.decode() if isinstance(tag, bytes) else tag
        if tag in delivered and eta - delivered[tag] > self.visibility_timeout:
            out.beyond_visibility.append((queue, str(headers.get("task") or "?"), eta - delivered[tag]))

    # -- the oldest waiting message ---------------------------------------------------------
    def oldest_ages(self, queues: list[str], now: float | None = None) -> dict[str, float]:
        """Seconds the oldest waiting message of each queue has waited (0 for an empty queue)."""
        from .queues import redis_keys

        now = time.time() if now is None else now
        plan = [(queue, redis_keys(queue, self.prefix, self.sep, self.steps)) for queue in queues]
        pipe = self.client.pipeline(transaction=False)
        for _, keys in plan:
            for key in keys:
                pipe.lindex(key, -1)
        replies = iter(pipe.execute(raise_on_error=False))
        out: dict[str, float] = {}
        with self._lock:
            for queue, keys in plan:
                tails = [reply for reply in (next(replies) for _ in keys) if isinstance(reply, (bytes, str))]
                out[queue] = self._oldest(queue, tails, now)
        return out

    def _oldest(self, queue: str, tails: list[bytes | str], now: float) -> float:
        previous = self._first_seen.get(queue, {})
        current: dict[str, float] = {}
        ages = []
        for raw in tails:
            try:
                headers = json.loads(raw).get("headers") or {}
            except (ValueError, AttributeError):
                continue
            sent_at = headers.get(SENT_AT_HEADER)
            if isinstance(sent_at, (int, float)) and not isinstance(sent_at, bool):
                ages.append(max(0.0, now - sent_at))
                continue
            # No publish time in the message: its age counts from the first read that saw it at the tail.
            message_id = str(headers.get("id"))
            current[message_id] = previous.get(message_id, now)
            ages.append(now - current[message_id])
        self._first_seen[queue] = current  # at most one id per priority list of the queue
        return max(ages, default=0.0)


def worker_concurrency(app: Any, connection: Any, timeout: float) -> dict[str, int]:
    """Pool size per worker, from an ``inspect stats`` broadcast (1 when a worker does not say)."""
    replies = app.control.inspect(timeout=timeout, connection=connection).stats() or {}
    out: dict[str, int] = {}
    for worker, stats in replies.items():
        pool = (stats or {}).get("pool") or {}
        size = pool.get("max-concurrency")
        out[str(worker)] = int(size) if isinstance(size, int) and size > 0 else 1
    return out


@dataclass
class QueueFigures:
    """One queue's backlog at one collection. ``None``: not measurable on this broker."""

    waiting: int
    unacked: int | None
    eta_held: int | None
    oldest_age: float | None
    concurrency: int  # total pool size of the live workers consuming the queue

    @property
    def backlog(self) -> int:
        """Tasks due now and not started: waiting in the broker, plus delivered-unacknowledged minus ETA-held."""
        return self.waiting + (self.unacked or 0) - (self.eta_held or 0)

    @property
    def load(self) -> float | None:
        """Backlog per pool slot of the consuming workers; None when no worker consumes the queue."""
        return self.backlog / self.concurrency if self.concurrency else None


def figures(
    lengths: dict[str, int],
    by_queue: dict[str, list[str]],
    concurrency: dict[str, int],
    unacked: Unacked | None = None,
    ages: dict[str, float] | None = None,
) -> dict[str, QueueFigures]:
    """Combine the reads of one collection, per queue of ``lengths``."""
    out = {}
    for queue, waiting in lengths.items():
        slots = sum(concurrency.get(worker, 1) for worker in by_queue.get(queue, ()))
        out[queue] = QueueFigures(
            waiting=waiting,
            unacked=unacked.unacked.get(queue, 0) if unacked is not None else None,
            eta_held=unacked.eta_held.get(queue, 0) if unacked is not None else None,
            oldest_age=(ages or {}).get(queue) if ages is not None else None,
            concurrency=slots,
        )
    return out


def read_figures(
    watched: Any, reader: RedisBacklog | None, by_queue: dict[str, list[str]], concurrency: dict[str, int]
) -> dict[str, QueueFigures]:
    """Depths, then (on Redis) the unacked hash and the list tails, read back to back for ``watched``'s queues."""
    queues = watched.queues()
    lengths = watched.lengths(queues)
    if reader is None:
        return figures(lengths, by_queue, concurrency)
    now = time.time()
    return figures(lengths, by_queue, concurrency, reader.unacked(now), reader.oldest_ages(queues, now))


def collect(watched: Any, by_queue: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """One read of every figure for ``watched`` (a CeleryQueues), as plain dicts (``monitor --once``)."""
    from .queues import _close_quietly

    conn = watched._connection()  # noqa: SLF001 - the short-timeout connection of the broadcasts
    try:
        concurrency = worker_concurrency(watched.app, conn, watched.inspect_timeout)
    finally:
        _close_quietly(conn)
    reader = (
        RedisBacklog(watched.redis_client(), watched.app.conf.broker_transport_options) if watched.is_redis else None
    )
    return {
        queue: {**vars(fig), "backlog": fig.backlog, "load": fig.load}
        for queue, fig in read_figures(watched, reader, by_queue, concurrency).items()
    }
