"""What the broker holds and who consumes it, read by :class:`CeleryQueues`.

* :meth:`CeleryQueues.lengths` reads the messages waiting per queue. On Redis it sums
  the priority sub-lists kombu writes (``<queue>`` and ``<queue>\\x06\\x16<step>``, with
  ``global_keyprefix`` in front), every key of every queue in one pipelined round trip;
  a missing list is 0. On RabbitMQ (and any other kombu transport) it is the
  ``message_count`` of a passive ``queue_declare``; a queue that does not exist is 0.
* :meth:`CeleryQueues.workers` broadcasts ``active_queues`` and counts the workers that
  answer, per queue. Only live workers answer a broadcast, so a SIGKILLed worker drops
  out of the very next collection, with no task events (``-E``) and no heartbeat expiry.
* Which queues: the configured ones (``AGENSIUM_QUEUES``) or, by default, the app's own
  (:func:`app_queues`: ``task_default_queue``, ``task_queues``, ``task_routes``, per-task
  ``queue=``), plus every queue a worker has been seen consuming (at most
  :data:`MAX_QUEUES`, so label values stay bounded). A queue whose workers all died keeps
  being reported, with 0 workers.

Both calls block on the network: callers wait on them through a
:class:`~otel_agensium._probe.Probe`. The gauges that export them are in
:mod:`otel_agensium.celery.gauges`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from .. import _lazy
from ..redact import redact_url

_log = logging.getLogger("otel_agensium.queues")

REDIS_TRANSPORTS = ("redis", "rediss")
# Label values are bounded: queues beyond this many are not reported (logged once).
MAX_QUEUES = 200
# Priorities a Celery message may carry (0-9). Sub-lists for all of them are read, not
# only the configured priority_steps, so a producer configured with other steps than
# this process is still counted; LLEN of a list that does not exist costs nothing.
ALL_PRIORITIES = range(10)


def _kombu_redis_defaults() -> tuple[str, tuple[int, ...]]:
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    return Channel.sep, tuple(PRIORITY_STEPS)


def redis_keys(queue: str, prefix: str = "", sep: str | None = None, steps: Iterable[int] | None = None) -> list[str]:
    """The Redis lists kombu keeps ``queue``'s messages in, as kombu's ``Channel._q_for_pri`` names them.

    Priority step 0 is the plain queue name; step ``n`` is ``<queue><sep><n>``.
    """
    default_sep, default_steps = _kombu_redis_defaults()
    sep = default_sep if sep is None else sep
    all_steps = sorted({int(s) for s in (default_steps if steps is None else steps)} | set(ALL_PRIORITIES))
    return [prefix + queue] + [f"{prefix}{queue}{sep}{step}" for step in all_steps if step]


# --- reading the broker ----------------------------------------------------------------


def app_queues(app: Any) -> dict[str, str]:
    """Queue name -> where ``app`` says it sends tasks there: ``task_default_queue``,
    ``task_queues``, ``task_routes`` (maps, patterns and router functions) and per-task ``queue=``."""
    from celery.app.routes import MapRoute, prepare

    out: dict[str, str] = {}
    conf = app.conf

    def add(name: Any, why: str) -> None:
        name = getattr(name, "name", name)
        if isinstance(name, str) and name and name not in out and len(out) < MAX_QUEUES:
            out[name] = why

    add(conf.task_default_queue, "task_default_queue")
    for queue in conf.task_queues or ():
        add(queue, "task_queues")
    for router in prepare(conf.task_routes):
        if isinstance(router, MapRoute):
            for route in [*router.map.values(), *router.patterns.values()]:
                add(route.get("queue") if isinstance(route, dict) else route, "task_routes")
    for name, task in list(app.tasks.items()):
        if name.startswith("celery."):  # Celery's own tasks
            continue
        if getattr(task, "queue", None):
            add(task.queue, f"{name} (queue=)")
        try:  # router functions too: where would this task go with no options?
            add(app.amqp.router.route({}, name).get("queue"), f"task_routes ({name})")
        except Exception:  # noqa: BLE001, S112 - a router that needs real arguments: skipped
            continue
    return out


class CeleryQueues:
    """Queue depth and live workers for a Celery app's broker. Every call blocks; see :class:`Probe`."""

    def __init__(
        self, app: Any, queues: Iterable[str] | None = None, timeout: float = 2.0, inspect_timeout: float = 1.0
    ) -> None:
        self.app = app
        self.timeout = timeout
        self.inspect_timeout = inspect_timeout
        self._lock = threading.Lock()
        self._known: dict[str, None] = {}
        self._overflow_logged = False
        self._redis: Any = None
        conn = app.connection_for_read()
        self.transport = str(conn.transport_cls)
        self.broker = redact_url(conn.as_uri(include_password=True))
        self.secrets: list[str] = [conn.password] if conn.password else []
        names = list(queues or ())
        self._app_queues_pending = not names  # read from the app on first use (its tasks may come later)
        self.add_queues(names)

    @property
    def is_redis(self) -> bool:
        return self.transport in REDIS_TRANSPORTS

    # -- which queues ----------------------------------------------------------------
    def queues(self) -> list[str]:
        if self._app_queues_pending:
            self._app_queues_pending = False
            self.add_queues(app_queues(self.app))
        with self._lock:
            return list(self._known)

    def add_queues(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                if not isinstance(name, str) or not name or name in self._known:
                    continue
                if len(self._known) >= MAX_QUEUES:
                    if not self._overflow_logged:
                        self._overflow_logged = True
                        _log.warning(
                            "otel-agensium: more than %d queues; %r and later ones are not reported",
                            MAX_QUEUES,
                            name[:100],
                        )
                    continue
                self._known[name] = None

    # -- connections ------------------------------------------------------------------
    def redis_client(self) -> Any:
        """A redis-py client for a Redis broker: short socket timeouts, no retries, one pool."""
        if self._redis is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            conn = self.app.connection_for_read()
            vhost = str(conn.virtual_host or "").strip("/")  # kombu: the virtual host is the db number
            kwargs: dict[str, Any] = {
                "host": conn.hostname or "localhost",
                "port": conn.port or 6379,
                "db": int(vhost) if vhost.isdigit() else 0,
                "username": conn.userid or None,
                "password": conn.password or None,
                "socket_connect_timeout": self.timeout,
                "socket_timeout": self.timeout,
                "retry": Retry(NoBackoff(), 0),
                "max_connections": 4,
            }
            use_ssl = self.app.conf.broker_use_ssl
            if self.transport == "rediss" or use_ssl:
                kwargs["ssl"] = True
                if isinstance(use_ssl, dict):
                    kwargs.update({k: v for k, v in use_ssl.items() if k.startswith("ssl_")})
            self._redis = redis.Redis(**kwargs)
        return self._redis

    def _connection(self) -> Any:
        """A new kombu connection of the app with short timeouts and one connect retry."""
        t = self.timeout
        options: dict[str, Any] = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
        if self.is_redis:
            options.update(socket_timeout=t, socket_connect_timeout=t)
        else:
            options.update(read_timeout=t, write_timeout=t)
        return self.app.connection_for_write(connect_timeout=t, transport_options=options, heartbeat=0)

    # -- depth ------------------------------------------------------------------------
    def lengths(self, queues: Iterable[str] | None = None) -> dict[str, int]:
        """Messages waiting per queue; raises when the broker cannot be read."""
        names = self.queues() if queues is None else list(queues)
        if not names:
            return {}
        if self.is_redis:
            return self._redis_lengths(names)
        return self._declare_lengths(names)

    def _redis_lengths(self, names: list[str]) -> dict[str, int]:
        options = self.app.conf.broker_transport_options or {}
        prefix = str(options.get("global_keyprefix") or "")
        plan = [(name, redis_keys(name, prefix, options.get("sep"), options.get("priority_steps"))) for name in names]
        pipe = self.redis_client().pipeline(transaction=False)
        for _, keys in plan:
            for key in keys:
                pipe.llen(key)
        replies = iter(pipe.execute(raise_on_error=False))  # one round trip for every key
        out: dict[str, int] = {}
        for name, keys in plan:
            # A key of another type answers WRONGTYPE: not a kombu list, nothing waiting in it.
            out[name] = sum(r for r in (next(replies) for _ in keys) if isinstance(r, int))
        return out

    def _declare_lengths(self, names: list[str]) -> dict[str, int]:
        from kombu.exceptions import ChannelError

        out: dict[str, int] = {}
        conn = self._connection()
        try:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0.2, interval_max=0.2, timeout=self.timeout
            )
            not_found = (ChannelError, *conn.channel_errors)
            channel = None
            for name in names:
                if channel is None:
                    channel = conn.channel()
                try:
                    out[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except not_found:  # the queue does not exist (404 closes the channel)
                    out[name] = 0
                    _close_quietly(channel)
                    channel = None
            if channel is not None:
                _close_quietly(channel)
        finally:
            _close_quietly(conn)
        return out

    # -- workers ----------------------------------------------------------------------
    def workers(self) -> dict[str, list[str]]:
        """Live workers per queue (names), from an ``active_queues`` broadcast; every known queue is present."""
        conn = self._connection()
        try:
            replies = self.app.control.inspect(timeout=self.inspect_timeout, connection=conn).active_queues()
        finally:
            _close_quietly(conn)
        seen: dict[str, set[str]] = {}
        for worker, consumed in (replies or {}).items():
            for queue in consumed or ():
                name = queue.get("name") if isinstance(queue, dict) else None
                if isinstance(name, str) and name:
                    seen.setdefault(name, set()).add(str(worker))
        self.add_queues(sorted(seen))
        return {name: sorted(seen.get(name, ())) for name in self.queues()}


def _close_quietly(thing: Any) -> None:
    try:
        (getattr(thing, "release", None) or thing.close)()
    except Exception:  # noqa: BLE001 - closing a dead connection may raise; nothing to do
        pass


# Names that lived here before the split; kept importable from this module.
_MOVED = {
    "Probe": ".._probe",
    "Sample": ".._probe",
    "describe": "..redact",
    "scrub": "..redact",
    "QueueGauges": ".gauges",
    "install_queue_gauges": ".gauges",
}


def __getattr__(name: str) -> Any:
    return _lazy.load(__name__, _MOVED, name)
