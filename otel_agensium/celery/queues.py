"""What the broker holds and who consumes it: ``celery_queue_length`` and ``celery_active_workers``.

* :meth:`CeleryQueues.lengths` reads the messages waiting per queue. On Redis it sums
  the priority sub-lists kombu writes (``<queue>`` and ``<queue>\\x06\\x16<step>``, with
  ``global_keyprefix`` in front), every key of every queue in one pipelined round trip;
  a missing list is 0. On RabbitMQ (and any other kombu transport) it is the
  ``message_count`` of a passive ``queue_declare``; a queue that does not exist is 0.
* :meth:`CeleryQueues.workers` broadcasts ``active_queues`` and counts the workers that
  answer, per queue. Only live workers answer a broadcast, so a SIGKILLed worker drops
  out of the very next collection, with no task events (``-E``) and no heartbeat expiry.
* Which queues: the configured ones (``AGENSIUM_QUEUES``) plus every queue a worker has
  been seen consuming (at most :data:`MAX_QUEUES`, so label values stay bounded). A
  queue whose workers all died keeps being reported, with 0 workers.

Both calls block on the network. :class:`Probe` runs them in a daemon thread, one at a
time, with a timeout for the caller and a short reuse of the last success;
:class:`QueueGauges` registers them as observable gauges on the SDK meter provider, so
every reader (OTLP push, Prometheus pull) exports them. A collection that fails or times
out reports nothing: an old depth is never exported as a fresh one.

Where they run: ``otel-agensium monitor -A myapp`` (one per deployment, the role Flower
and celery-exporter play), or :func:`install_queue_gauges` inside a single-replica app.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, NamedTuple
from urllib.parse import quote

from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from ..redact import redact_url
from ..settings import DEFAULT_QUEUES
from .metrics import ACTIVE_WORKERS, METER_NAME, QUEUE_LENGTH

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


def redis_keys(queue: str, prefix: str = "", sep: str | None = None,
               steps: Iterable[int] | None = None) -> list[str]:
    """The Redis lists kombu keeps ``queue``'s messages in, as kombu's ``Channel._q_for_pri`` names them.

    Priority step 0 is the plain queue name; step ``n`` is ``<queue><sep><n>``.
    """
    default_sep, default_steps = _kombu_redis_defaults()
    sep = default_sep if sep is None else sep
    all_steps = sorted({int(s) for s in (default_steps if steps is None else steps)} | set(ALL_PRIORITIES))
    return [prefix + queue] + [f"{prefix}{queue}{sep}{step}" for step in all_steps if step]


# --- keeping secrets out of error text ------------------------------------------------

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@\s]*)@")


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Mask the password of every URL in ``text`` and every known secret string."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    for secret in secrets:
        if secret:
            for form in {secret, quote(secret, safe="")}:
                text = text.replace(form, "***")
    return text


def describe(exc: BaseException, secrets: Iterable[str | None] = (), limit: int = 300) -> str:
    """One line for an error, safe to print, log or return in a health body."""
    if isinstance(exc, (TimeoutError, concurrent.futures.TimeoutError)) and not str(exc):
        return "TimeoutError: no answer in time"
    text = f"{type(exc).__name__}: {scrub(str(exc), secrets)}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- running blocking checks with a timeout -------------------------------------------


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


# --- reading the broker ----------------------------------------------------------------


class CeleryQueues:
    """Queue depth and live workers for a Celery app's broker. Every call blocks; see :class:`Probe`."""

    def __init__(self, app: Any, queues: Iterable[str] | None = None, timeout: float = 2.0,
                 inspect_timeout: float = 1.0) -> None:
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
        self.add_queues(DEFAULT_QUEUES if queues is None else queues)

    @property
    def is_redis(self) -> bool:
        return self.transport in REDIS_TRANSPORTS

    # -- which queues ----------------------------------------------------------------
    def queues(self) -> list[str]:
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
                        _log.warning("otel-agensium: more than %d queues; %r and later ones are not reported",
                                     MAX_QUEUES, name[:100])
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
        plan = [(name, redis_keys(name, prefix, options.get("sep"), options.get("priority_steps")))
                for name in names]
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
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, interval_max=0.2,
                                  timeout=self.timeout)
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


# --- the gauges ------------------------------------------------------------------------


class QueueGauges:
    """``celery_queue_length{queue}`` and ``celery_active_workers{queue}`` as observable gauges.

    Callbacks wait at most ``timeout`` s (less when the reader's own timeout is shorter),
    never raise, and report nothing for a collection whose check failed.
    """

    def __init__(self, queues: CeleryQueues, meter_provider: MeterProvider, ttl: float = 1.0) -> None:
        self.queues = queues
        self.meter_provider = meter_provider
        self.length_probe = Probe(queues.lengths, ttl, "queue-length")
        self.worker_probe = Probe(queues.workers, ttl, "active-workers")
        self.enabled = False
        self._failing: dict[str, bool] = {}

    def install(self) -> None:
        from ..version import __version__

        meter = self.meter_provider.get_meter(METER_NAME, __version__)
        meter.create_observable_gauge(
            QUEUE_LENGTH, callbacks=[self._observe_lengths], unit="{message}",
            description="Messages waiting in the broker per queue.",
        )
        meter.create_observable_gauge(
            ACTIVE_WORKERS, callbacks=[self._observe_workers], unit="{worker}",
            description="Live workers consuming the queue (answering an active_queues broadcast).",
        )
        self.enabled = True

    def uninstall(self) -> None:
        # The SDK cannot remove an instrument; its callbacks just stop reporting.
        self.enabled = False

    def _wait(self, probe: Probe, options: CallbackOptions | None) -> Any:
        timeout = self.queues.timeout + (self.queues.inspect_timeout if probe is self.worker_probe else 0)
        if options is not None and getattr(options, "timeout_millis", None):
            timeout = min(timeout, options.timeout_millis / 1000)
        return probe.get(timeout).value

    def _report(self, what: str, exc: BaseException | None) -> None:
        failing = exc is not None
        if self._failing.get(what, False) == failing:
            return
        self._failing[what] = failing
        if failing:
            _log.warning("otel-agensium: %s not reported: %s (broker %s)", what,
                         describe(exc, self.queues.secrets), self.queues.broker)
        else:
            _log.info("otel-agensium: %s reported again (broker %s)", what, self.queues.broker)

    def _observe_lengths(self, options: CallbackOptions | None = None) -> list[Observation]:
        if not self.enabled:
            return []
        try:
            self.worker_probe.future()  # start the broadcast now; it runs while the depth is read
            lengths = self._wait(self.length_probe, options)
        except BaseException as exc:  # noqa: BLE001 - a callback never raises into the SDK
            self._report(QUEUE_LENGTH, exc)
            return []
        self._report(QUEUE_LENGTH, None)
        return [Observation(count, {"queue": name}) for name, count in lengths.items()]

    def _observe_workers(self, options: CallbackOptions | None = None) -> list[Observation]:
        if not self.enabled:
            return []
        try:
            by_queue = self._wait(self.worker_probe, options)
        except BaseException as exc:  # noqa: BLE001
            self._report(ACTIVE_WORKERS, exc)
            return []
        self._report(ACTIVE_WORKERS, None)
        return [Observation(len(workers), {"queue": name}) for name, workers in by_queue.items()]


def install_queue_gauges(app: Any, handle: Any = None, queues: Iterable[str] | None = None) -> QueueGauges | None:
    """Register the queue gauges for ``app`` on the meter provider of ``configure()``'s handle.

    Returns None when metrics are off. Calling it again returns the installed gauges.
    Run them in one process per deployment (``otel-agensium monitor``) or in a
    single-replica app: every process that runs them reports the same broker-wide values.
    """
    from ..bootstrap import current

    handle = handle or current()
    if handle is None or handle.meter_provider is None:
        return None
    for integration in handle.integrations:
        if isinstance(integration, QueueGauges):
            return integration
    settings = handle.settings
    watched = CeleryQueues(app, settings.queues if queues is None else queues, timeout=settings.health_timeout,
                           inspect_timeout=settings.inspect_timeout)
    gauges = QueueGauges(watched, handle.meter_provider, ttl=settings.health_cache_ttl)
    gauges.install()
    handle.integrations.append(gauges)
    return gauges
