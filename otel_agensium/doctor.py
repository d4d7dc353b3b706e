"""``otel-agensium doctor -A myapp``: the seed's troubleshooting guide, run as checks.

One line per check, with a verdict and, when something is wrong, the fix in one sentence::

    broker           ok      redis://:***@127.0.0.1:6379/0 answered PING in 0.4 ms (Redis 7.0.15)
    workers          ok      1 worker answered within 1 s: w1@host
    queue:celery     ok      consumed by w1@host; 0 waiting
    queue:profile    FAIL    the app sends tasks here (task_routes) but no live worker consumes it; 3 waiting
                             Fix: Start a worker that consumes it (celery -A myapp worker -Q profile) ...
    otlp             ok      POST http://127.0.0.1:4318/v1/traces answered 200 in 1.2 ms
    time_limits      warn    no task_time_limit / task_soft_time_limit; ... Fix: Set task_soft_time_limit ...

(the fix is on the same line; wrapped here). When the broker is down::

    workers          skipped (broker unreachable)

Verdicts: ``ok``, ``FAIL`` (exit status 1), ``warn`` (advice; exit 0) and ``skipped``
(the check could not run, and says why).

What each check reads, and what it reuses:

* ``settings``: the environment, as ``otel-agensium check``.
* ``app``: imports ``-A`` and its task modules (``import_default_modules``), as a worker
  does: an import error here is a worker that cannot run those tasks.
* ``broker``: PING (and the server version) on Redis through the redis client of
  :class:`~otel_agensium.celery.queues.CeleryQueues` (short socket timeouts, no retry);
  on other transports a kombu connect. Authentication failures are told apart from a
  refused connection and a timeout. URLs are printed redacted, error text scrubbed.
* ``workers``: one ``active_queues`` broadcast (:meth:`CeleryQueues.workers`): a ping
  whose answer also says which queues each worker consumes.
* ``queue:<name>``: every queue the app routes tasks to (``task_routes``, per-task
  ``queue``, ``task_queues``, ``task_default_queue``; plus ``AGENSIUM_QUEUES`` or
  ``--queues`` when set) must be consumed by a live worker; any other queue holding
  messages that no worker consumes fails too. Depths come from :meth:`CeleryQueues.lengths`
  (one pipelined round trip on Redis). On Redis the queues kombu has bound
  (``_kombu.binding.*``) are looked at as well, so a message sent to a misspelt queue
  name is found.
* ``otlp``: a TCP connect (gRPC) or an empty OTLP/HTTP export to
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces``, which a Collector answers with 200).
* ``time_limits`` and ``memory_limit``: the app's ``task_soft_time_limit`` /
  ``task_time_limit`` (and per-task limits), ``worker_max_memory_per_child``; missing
  ones warn. Flags given on a worker's command line are not visible from here.

Every network step runs in a :class:`~otel_agensium.celery.queues.Probe` thread and is
waited for at most ``--timeout`` seconds (default ``AGENSIUM_HEALTH_TIMEOUT``); a check
that raises is reported as failed, never as a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

OK, FAIL, WARN, SKIPPED = "ok", "FAIL", "warn", "skipped"
# Queues looked at, at most (label and output sizes stay bounded).
MAX_QUEUES = 200
# Keys of kombu's Redis bindings looked at, at most.
MAX_BINDING_KEYS = 1000
# Queues of Celery's own plumbing: remote control, replies, events.
_PLUMBING = re.compile(r"(\.pidbox$|^celeryev\.|\.reply\.celery\.pidbox$)")


@dataclass
class Result:
    check: str
    verdict: str
    detail: str
    fix: str | None = None
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """``<check> <verdict> <detail> Fix: <fix>``; a skipped check reads ``<check> skipped (<why>)``."""
        detail = " ".join(self.detail.split())  # one line, whatever the error text held
        if self.verdict == SKIPPED:
            return f"{self.check:<16} skipped ({detail})"
        text = f"{self.check:<16} {self.verdict:<7} {detail}"
        if self.fix and self.verdict in (FAIL, WARN):
            text += " Fix: " + " ".join(self.fix.split())
        return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _names(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --- what went wrong with a connection --------------------------------------------------


def _kind(exc: BaseException) -> str:
    """auth / refused / timeout / dns / other, for choosing the fix sentence."""
    import concurrent.futures

    text = f"{type(exc).__name__} {exc}".lower()
    try:
        import redis

        if isinstance(exc, redis.AuthenticationError):
            return "auth"
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    if any(s in text for s in ("noauth", "wrongpass", "invalid password", "authentication", "access_refused",
                               "accessrefused", "username-password", "access refused")):
        return "auth"
    if isinstance(exc, (TimeoutError, concurrent.futures.TimeoutError, socket.timeout)) or "timed out" in text \
            or "timeout" in type(exc).__name__.lower():
        return "timeout"
    if isinstance(exc, ConnectionRefusedError) or "refused" in text or "errno 111" in text:
        return "refused"
    if "protocol error" in text or "invalidresponse" in text or "unexpected frame" in text:
        return "protocol"
    if isinstance(exc, socket.gaierror) or "name or service not known" in text or "nodename nor servname" in text \
            or "temporary failure in name resolution" in text or "getaddrinfo" in text:
        return "dns"
    return "other"


def _broker_fix(kind: str, broker: str, is_redis: bool = True) -> str:
    start = "redis-server, or docker compose -f compose.otel.yaml up -d redis" if is_redis else "e.g. RabbitMQ"
    example = "redis://:PASSWORD@host:6379/0" if is_redis else "amqp://user:PASSWORD@host:5672//"
    return {
        "auth": f"Put the broker's password in the broker URL ({example}, from the environment, e.g. "
                "AGENSIUM_BROKER_URL or the app's broker_url) and check the user's permissions.",
        "refused": f"Start the broker ({start}) or correct the host and port in the broker URL ({broker}).",
        "protocol": "Correct the port in the broker URL: what listens there is not the broker "
                    f"({'Redis usually listens on 6379' if is_redis else 'AMQP usually on 5672'}).",
        "timeout": "Check that the host and port are the broker's and reachable from here (firewall, "
                   "security group, Docker network), and that the broker is not frozen or overloaded.",
        "dns": "Correct the host name in the broker URL, or run doctor where that name resolves "
               "(inside the compose network the host is redis).",
    }.get(kind, "Check the broker URL and the broker's own logs.")


def broker_error(exc: BaseException, broker: str, timeout: float, is_redis: bool = True) -> tuple[str, str]:
    """What went wrong talking to ``broker`` (redacted URL), in a few words, and the fix in one sentence."""
    kind = _kind(exc)
    what = {"auth": "authentication failed", "refused": "connection refused",
            "timeout": f"no answer within {timeout:g} s", "dns": "host not found",
            "protocol": "something else answers there"}.get(kind, "unreachable")
    return what, _broker_fix(kind, broker, is_redis)


# --- the doctor ----------------------------------------------------------------------------


class Doctor:
    def __init__(self, app_path: str | None, broker: str | None, timeout: float | None = None,
                 queues: list[str] | None = None, environ: dict[str, str] | None = None) -> None:
        from .settings import load

        self.environ = dict(os.environ if environ is None else environ)
        self.settings = load(environ=self.environ, strict_raises=False)
        self.timeout = float(timeout if timeout is not None else self.settings.health_timeout)
        self.inspect_timeout = min(float(self.settings.inspect_timeout), self.timeout)
        self.app_path = app_path
        self.broker_arg = broker or self.settings.broker_url
        self.explicit_queues = queues if queues is not None else (
            list(self.settings.queues) if self.environ.get("AGENSIUM_QUEUES", "").strip() else None)
        self.app: Any = None
        self.app_loaded = False
        self.celery: Any = None  # CeleryQueues
        self.results: list[Result] = []

    # -- running ----------------------------------------------------------------------------
    def run(self) -> list[Result]:
        from .celery.queues import Probe

        otlp = Probe(self._otlp_timed, ttl=0, name="doctor-otlp").future()  # in parallel with the broker checks
        self._step("settings", self._settings_check)
        self._step("app", self._app_check)
        broker_ok = self._step("broker", self._broker_check)
        if broker_ok:
            workers = self._step("workers", self._workers_check)
            self._queue_checks(workers)
        else:
            reason = "broker unreachable" if self.celery is not None else "no broker: the app did not load"
            for name in ("workers", "queues"):
                self.results.append(Result(name, SKIPPED, reason))
        try:
            result = otlp.result(self.timeout + 1).value  # urlopen's timeout does not bound name resolution
        except Exception as exc:  # noqa: BLE001
            result = self._otlp_failure(exc)
            result.seconds = self.timeout + 1
        self.results.append(result)
        self._step("time_limits", self._time_limits_check)
        self._step("memory_limit", self._memory_check)
        return self.results

    def _step(self, name: str, check: Callable[[], Result | tuple[Result, Any]]) -> Any:
        """Run one check; a check that raises is a FAIL line, never a traceback."""
        from .celery.queues import describe

        started = time.monotonic()
        value: Any = None
        try:
            outcome = check()
            result, value = outcome if isinstance(outcome, tuple) else (outcome, None)
        except Exception as exc:  # noqa: BLE001
            result = Result(name, FAIL, f"the check itself failed: {describe(exc, self._secrets())}",
                            "Run it again with --timeout 10; if it persists, report it with this line.")
        result.seconds = round(time.monotonic() - started, 3)
        self.results.append(result)
        return value

    def _secrets(self) -> list[str]:
        secrets = list(self.celery.secrets) if self.celery is not None else []
        if self.broker_arg:
            try:
                password = urlsplit(self.broker_arg).password
            except ValueError:
                password = None
            if password:
                secrets.append(password)
        return secrets + [v for v in self.settings.headers.values() if v]

    def _wait(self, func: Callable[[], Any], name: str, timeout: float) -> Any:
        from .celery.queues import Probe

        return Probe(func, ttl=0, name=f"doctor-{name}").get(timeout).value

    # -- settings and app -------------------------------------------------------------------
    def _settings_check(self) -> Result:
        from .settings import SETTINGS

        problems = self.settings.problems
        if problems:
            return Result("settings", FAIL, f"{_plural(len(problems), 'setting')} invalid, defaults used: "
                          + "; ".join(problems), "Correct the variables named above (otel-agensium check lists them).",
                          data={"problems": problems})
        return Result("settings", OK, f"{len(SETTINGS)} settings valid")

    def _app_check(self) -> Result:
        from .celery.queues import CeleryQueues

        result = self._load_app()
        if self.app is not None:  # the broker checks run on the app's broker (or --broker) from here on
            self.celery = CeleryQueues(self.app, (), timeout=self.timeout, inspect_timeout=self.inspect_timeout)
            result.data["broker"] = self.celery.broker
        return result

    def _load_app(self) -> Result:
        from .celery.queues import describe
        from .monitor import load_app

        if not self.app_path:
            self.app = load_app(None, self.broker_arg)
            return Result("app", SKIPPED, "no -A: routes, time limits and memory limits not checked")
        try:
            self.app = load_app(self.app_path, self.broker_arg)
            self.app.loader.import_default_modules()  # the task modules a worker imports
            self.app.finalize(auto=True)
        except Exception as exc:  # noqa: BLE001 - the seed's "tasks failing immediately": import errors
            self.app = load_app(None, self.broker_arg) if self.broker_arg else None
            return Result("app", FAIL, f"cannot import {self.app_path}: {describe(exc, self._secrets())}",
                          f"Fix that import error (try: python -c 'import {self.app_path.split(':')[0]}' in "
                          "the workers' environment); workers that cannot import a task module reject its "
                          "tasks as unregistered.")
        self.app_loaded = True
        tasks = self._tasks()
        return Result("app", OK, f"{self.app_path} imported with its task modules: {_plural(len(tasks), 'task')}",
                      data={"tasks": sorted(tasks)})

    def _tasks(self) -> dict[str, Any]:
        return {name: task for name, task in self.app.tasks.items() if not name.startswith("celery.")}

    # -- broker -----------------------------------------------------------------------------
    def _broker_check(self) -> tuple[Result, bool]:
        from .celery.queues import describe

        if self.celery is None:
            return Result("broker", SKIPPED, "the app did not load and no --broker was given"), False
        broker = self.celery.broker
        started = time.monotonic()
        try:
            version = self._wait(self._ping_broker, "broker", self.timeout)
        except Exception as exc:  # noqa: BLE001
            kind = _kind(exc)
            what, fix = broker_error(exc, broker, self.timeout, self.celery.is_redis)
            return Result("broker", FAIL, f"{broker}: {what} ({describe(exc, self._secrets())})", fix,
                          data={"broker": broker, "error": kind}), False
        ms = (time.monotonic() - started) * 1000
        verb = "answered PING" if self.celery.is_redis else "accepted a connection"
        extra = f" (Redis {version})" if version else ""
        return Result("broker", OK, f"{broker} {verb} in {ms:.1f} ms{extra}", data={"broker": broker}), True

    def _ping_broker(self) -> str | None:
        if self.celery.is_redis:
            client = self.celery.redis_client()
            client.ping()
            try:
                return str(client.info("server").get("redis_version") or "") or None
            except Exception:  # noqa: BLE001 - INFO may be forbidden by an ACL; PING was enough
                return None
        conn = self.celery._connection()  # noqa: SLF001 - the same short-timeout connection the gauges use
        try:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, interval_max=0.2,
                                   timeout=self.timeout)
        finally:
            conn.release()
        return None

    # -- workers and queues ---------------------------------------------------------------
    def _workers_check(self) -> tuple[Result, dict[str, list[str]] | None]:
        from .celery.queues import describe

        app_ref = self.app_path or "<app>"
        try:
            by_queue = self._wait(self.celery.workers, "workers", self.timeout + self.inspect_timeout)
        except Exception as exc:  # noqa: BLE001
            return Result("workers", FAIL, f"the broadcast failed: {describe(exc, self._secrets())}",
                          "Check the broker (above) and that workers use the same broker URL."), None
        live = sorted({w for names in by_queue.values() for w in names})
        window = f"{self.inspect_timeout:g} s"
        if not live:
            return Result("workers", FAIL, f"no worker answered within {window}",
                          f"Start workers (celery -A {app_ref} worker -Q <queues>) and check their logs; they must "
                          "use this broker and keep remote control on (worker_enable_remote_control).",
                          data={"workers": []}), by_queue
        return Result("workers", OK, f"{_plural(len(live), 'worker')} answered within {window}: {_names(live)}",
                      data={"workers": live}), by_queue

    def routed_queues(self) -> dict[str, str]:
        """Queue name -> where the app says it sends tasks there (empty without -A)."""
        out: dict[str, str] = {}
        if not self.app_loaded:
            return out
        conf = self.app.conf

        def add(name: Any, why: str) -> None:
            name = getattr(name, "name", name)
            if isinstance(name, str) and name and name not in out and len(out) < MAX_QUEUES:
                out[name] = why

        add(conf.task_default_queue, "task_default_queue")
        for queue in conf.task_queues or ():
            add(queue, "task_queues")
        from celery.app.routes import MapRoute, prepare

        for router in prepare(conf.task_routes):
            if isinstance(router, MapRoute):
                for route in [*router.map.values(), *router.patterns.values()]:
                    add(route.get("queue") if isinstance(route, dict) else route, "task_routes")
        for name, task in self._tasks().items():
            if getattr(task, "queue", None):
                add(task.queue, f"{name} (queue=)")
            try:  # router functions too: where would this task go with no options?
                add(self.app.amqp.router.route({}, name).get("queue"), f"task_routes ({name})")
            except Exception:  # noqa: BLE001, S112 - a router that needs real arguments: skipped
                continue
        return out

    def _bound_queues(self) -> list[str]:
        """Queues kombu bound on a Redis broker (``_kombu.binding.<exchange>`` sets), plumbing excluded."""
        from kombu.transport.redis import Channel

        options = self.app.conf.broker_transport_options or {}
        prefix = str(options.get("global_keyprefix") or "")
        sep = options.get("sep") or Channel.sep
        client = self.celery.redis_client()
        found: dict[str, None] = {}
        keys = []
        for i, key in enumerate(client.scan_iter(match=f"{prefix}_kombu.binding.*", count=200)):
            if i >= MAX_BINDING_KEYS:
                break
            keys.append(key)
        if keys:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.smembers(key)
            for members in pipe.execute(raise_on_error=False):
                for member in members if isinstance(members, set) else ():
                    text = member.decode(errors="replace") if isinstance(member, bytes) else str(member)
                    queue = text.split(sep)[-1]
                    if queue and not _PLUMBING.search(queue) and len(found) < MAX_QUEUES:
                        found[queue] = None
        return list(found)

    def _queue_checks(self, by_queue: dict[str, list[str]] | None) -> None:
        from .celery.queues import describe

        started = time.monotonic()
        app_ref = self.app_path or "<app>"
        expected = self.routed_queues()
        for name in self.explicit_queues or ():
            expected.setdefault(name, "AGENSIUM_QUEUES")
        names: dict[str, None] = dict.fromkeys(expected)
        names.update(dict.fromkeys(self.settings.queues))
        names.update(dict.fromkeys(by_queue or {}))
        if self.celery.is_redis:
            try:
                names.update(dict.fromkeys(self._wait(self._bound_queues, "bindings", self.timeout)))
            except Exception:  # noqa: BLE001 - the depth read below reports a broken broker
                pass
        names = dict.fromkeys(list(names)[:MAX_QUEUES])
        try:
            lengths = self._wait(lambda: self.celery.lengths(list(names)), "lengths", self.timeout)
            depth_error = None
        except Exception as exc:  # noqa: BLE001
            lengths, depth_error = {}, describe(exc, self._secrets())
        seconds = round(time.monotonic() - started, 3)
        if by_queue is None:
            self.results.append(Result("queues", SKIPPED, "workers could not be asked", seconds=seconds))
            return
        listed = 0
        for name in names:
            consumers = by_queue.get(name, [])
            waiting = lengths.get(name)
            shown = "?" if waiting is None else str(waiting)
            data = {"queue": name, "workers": consumers, "waiting": waiting, "routed": name in expected}
            if name in expected:
                if consumers:
                    result = Result(f"queue:{name}", OK, f"consumed by {_names(consumers)}; {shown} waiting",
                                    data=data)
                else:
                    result = Result(
                        f"queue:{name}", FAIL,
                        f"the app sends tasks here ({expected[name]}) but no live worker consumes it; "
                        f"{shown} waiting",
                        f"Start a worker that consumes it (celery -A {app_ref} worker -Q {name}) or add {name} to "
                        "an existing worker's -Q list.", data=data)
            elif consumers:
                result = Result(f"queue:{name}", OK, f"consumed by {_names(consumers)}; {shown} waiting", data=data)
            elif waiting:
                result = Result(
                    f"queue:{name}", FAIL,
                    f"{_plural(waiting, 'message')} waiting and no live worker consumes it "
                    "(and the app does not route tasks here)",
                    f"Start a worker with -Q {name}, or, if {name} is a misspelt or retired queue, fix the queue= "
                    f"or task_routes that sends there and purge it (celery -A {app_ref} purge -Q {name}).",
                    data=data)
            else:
                continue  # a known name nobody uses and nothing waits in: not worth a line
            result.seconds = seconds
            self.results.append(result)
            listed += 1
        if depth_error is not None:
            self.results.append(Result("queues", WARN, f"depths not read: {depth_error}",
                                       "Run doctor again; consumers above were checked without depths.",
                                       seconds=seconds))
        elif not listed:
            self.results.append(Result("queues", OK, "no queue is routed to, consumed or holding messages",
                                       seconds=seconds))

    # -- OTLP endpoint ------------------------------------------------------------------
    def _otlp_timed(self) -> Result:
        started = time.monotonic()
        try:
            result = self._otlp()
        except Exception as exc:  # noqa: BLE001 - refused, timed out, not resolved: one line
            result = self._otlp_failure(exc)
        result.seconds = round(time.monotonic() - started, 3)
        return result

    def _otlp(self) -> Result:
        settings = self.settings
        if settings.sdk_disabled:
            return Result("otlp", SKIPPED, "OTEL_SDK_DISABLED=true: no telemetry at all")
        if not settings.otlp:
            return Result("otlp", SKIPPED, "AGENSIUM_OTLP=false: nothing is sent over OTLP")
        endpoint = settings.endpoint
        parts = urlsplit(endpoint)
        default_port = {"https": 443, "http": 80}.get(parts.scheme, 4317)
        host, port = parts.hostname or "localhost", parts.port or default_port
        started = time.monotonic()
        if settings.protocol == "grpc":
            with socket.create_connection((host, port), timeout=self.timeout):
                pass
            ms = (time.monotonic() - started) * 1000
            return Result("otlp", OK, f"{endpoint}: TCP connect in {ms:.1f} ms (gRPC; not probed past TCP)",
                          data={"endpoint": endpoint})
        url = f"{endpoint}/v1/traces"
        headers = {"Content-Type": "application/x-protobuf", **settings.headers}
        request = urllib.request.Request(url, data=b"", headers=headers, method="POST")  # an empty export
        fix_port = ("Point OTEL_EXPORTER_OTLP_ENDPOINT at the Collector's OTLP/HTTP port (4318) as a base URL "
                    "without /v1/...; for port 4317 set OTEL_EXPORTER_OTLP_PROTOCOL=grpc.")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) only
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        ms = (time.monotonic() - started) * 1000
        data = {"endpoint": endpoint, "status": status}
        if 200 <= status < 300:
            return Result("otlp", OK, f"POST {url} answered {status} in {ms:.1f} ms", data=data)
        if status in (401, 403):
            return Result("otlp", FAIL, f"POST {url} answered {status}: the endpoint wants credentials",
                          "Set OTEL_EXPORTER_OTLP_HEADERS (e.g. authorization=Bearer <token>) to what the "
                          "endpoint expects.", data=data)
        if status in (404, 405, 415):
            return Result("otlp", FAIL, f"POST {url} answered {status}: not an OTLP/HTTP receiver", fix_port,
                          data=data)
        return Result("otlp", WARN, f"POST {url} answered {status}: reachable, but not accepting exports now",
                      "Check the Collector's logs (docker compose -f compose.otel.yaml logs collector).", data=data)

    def _otlp_failure(self, exc: BaseException) -> Result:
        from .celery.queues import describe

        reason = getattr(exc, "reason", exc)  # URLError wraps the socket error
        kind = _kind(reason if isinstance(reason, BaseException) else exc)
        endpoint = self.settings.endpoint
        what = {"refused": "connection refused", "timeout": f"no answer within {self.timeout:g} s",
                "dns": "host not found"}.get(kind, "unreachable")
        return Result("otlp", FAIL, f"{endpoint}: {what} ({describe(exc, self._secrets())})",
                      "Start the Collector (docker compose -f compose.otel.yaml up -d collector) or set "
                      "OTEL_EXPORTER_OTLP_ENDPOINT to where it listens; until then telemetry is dropped "
                      "(the app itself is not affected).", data={"endpoint": endpoint, "error": kind})

    # -- limits -------------------------------------------------------------------------
    def _time_limits_check(self) -> Result:
        if not self.app_loaded:
            return Result("time_limits", SKIPPED, "no app loaded")
        conf = self.app.conf
        soft, hard = conf.task_soft_time_limit, conf.task_time_limit
        tasks = self._tasks()
        unlimited = sorted(name for name, task in tasks.items()
                           if not (hard or soft or getattr(task, "time_limit", None)
                                   or getattr(task, "soft_time_limit", None)))
        data = {"task_soft_time_limit": soft, "task_time_limit": hard, "tasks_without_limit": unlimited}
        fix = ("Set task_soft_time_limit (the task gets SoftTimeLimitExceeded and can clean up) and task_time_limit "
               "a little higher (the child is killed), in the app's config or per task, or start workers with "
               "--soft-time-limit/--time-limit.")
        if soft and hard and soft >= hard:
            return Result("time_limits", WARN, f"task_soft_time_limit={soft:g} s is not below task_time_limit="
                          f"{hard:g} s: the soft limit never fires first", fix, data=data)
        if hard or soft:
            parts = [f"task_soft_time_limit={soft:g} s" if soft else "no task_soft_time_limit",
                     f"task_time_limit={hard:g} s" if hard else "no task_time_limit"]
            if not hard:
                return Result("time_limits", WARN, ", ".join(parts) + ": a task that catches SoftTimeLimitExceeded "
                              "or blocks in C code is never stopped", fix, data=data)
            return Result("time_limits", OK, ", ".join(parts), data=data)
        if tasks and not unlimited:
            return Result("time_limits", OK, f"no app-wide limit; all {_plural(len(tasks), 'task')} set their own",
                          data=data)
        return Result("time_limits", WARN,
                      f"no task_time_limit / task_soft_time_limit; {len(unlimited)} of {_plural(len(tasks), 'task')} "
                      f"without a limit of their own ({_names(unlimited, 4)}): a stuck task holds a worker slot "
                      "forever (command-line limits of the workers are not visible here)", fix, data=data)

    def _memory_check(self) -> Result:
        if not self.app_loaded:
            return Result("memory_limit", SKIPPED, "no app loaded")
        conf = self.app.conf
        kib, tasks = conf.worker_max_memory_per_child, conf.worker_max_tasks_per_child
        data = {"worker_max_memory_per_child_kib": kib, "worker_max_tasks_per_child": tasks}
        if kib:
            return Result("memory_limit", OK, f"worker_max_memory_per_child={kib} KiB ({kib / 1024:.0f} MiB): a child "
                          "above it is replaced after its current task", data=data)
        also = f" (worker_max_tasks_per_child={tasks} recycles children by count only)" if tasks else ""
        return Result("memory_limit", WARN,
                      f"no worker_max_memory_per_child{also}: a leaking task grows its child until the OOM killer "
                      "stops it (a --max-memory-per-child flag on the workers is not visible here)",
                      "Set worker_max_memory_per_child in KiB (e.g. 500000) or start workers with "
                      "--max-memory-per-child=500000, and watch celery_worker_process_resident_memory_bytes.",
                      data=data)


def check_otlp(timeout: float | None = None, environ: dict[str, str] | None = None) -> Result:
    """The ``otlp`` check alone, for a command that is about to export (``demo --otlp``)."""
    return Doctor(None, None, timeout=timeout, environ=environ)._otlp_timed()


def _quiet_libraries() -> None:
    """kombu and celery log connection retries with tracebacks; doctor reports them in one line instead."""
    for name in ("kombu", "celery", "amqp", "redis", "urllib3"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def run(app_path: str | None = None, broker: str | None = None, as_json: bool = False,
        timeout: float | None = None, queues: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    """Print one line per check (or a JSON list); 1 when any check failed, 2 on a usage error."""
    _quiet_libraries()
    doctor = Doctor(app_path, broker, timeout=timeout, queues=queues)
    if not app_path and not doctor.broker_arg:
        print("otel-agensium doctor: give -A/--app or --broker (or AGENSIUM_BROKER_URL)", file=sys.stderr)
        return 2
    results = doctor.run()
    if as_json:
        print(json.dumps([asdict(r) for r in results], sort_keys=True, default=str), file=out, flush=True)
    else:
        for result in results:
            print(result.line(), file=out, flush=True)
        failed = sum(r.verdict == FAIL for r in results)
        warned = sum(r.verdict == WARN for r in results)
        print(f"{_plural(len(results), 'check')}: {failed} failed, {warned} warned", file=out, flush=True)
    return 1 if any(r.verdict == FAIL for r in results) else 0
