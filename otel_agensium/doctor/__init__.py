"""``otel-agensium doctor -A myapp``: the troubleshooting guide (README, Troubleshooting), run as checks.

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
* ``beat``: the app's ``beat_schedule`` against what beat reported (the status hash
  :mod:`otel_agensium.celery.beat` writes on a Redis broker): beat down or an entry late by
  more than ``AGENSIUM_BEAT_TOLERANCE`` fails; no beat reporting, or another schedule, warns.
* ``eta``: on Redis, every task workers hold for an ETA/countdown (kombu's ``unacked``
  hash) and the ``beat_schedule`` countdowns, against ``visibility_timeout``: a task
  scheduled further ahead is delivered twice; warns.
* ``otlp``: a TCP connect (gRPC) or an empty OTLP/HTTP export to
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``/v1/traces``, which a Collector answers with 200).
* ``time_limits`` and ``memory_limit``: the app's ``task_soft_time_limit`` /
  ``task_time_limit`` (and per-task limits), ``worker_max_memory_per_child``; missing
  ones warn. Flags given on a worker's command line are not visible from here.

Every network step runs in a :class:`~otel_agensium._probe.Probe` thread and is
waited for at most ``--timeout`` seconds (default ``AGENSIUM_HEALTH_TIMEOUT``); a check
that raises is reported as failed, never as a traceback.

Layout: :class:`~.context.Context` is what every check reads (settings, app, broker
client, a bounded wait); each check is a function from the context to results, one
module per area (``app``, ``broker``, ``queues``, ``beat``, ``eta``, ``otlp``, ``limits``); :data:`CHECKS`
lists them in order; the verdict over the results is pure (:mod:`.result`).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import TextIO

from .._probe import Probe, Sample
from ..redact import describe
from . import app, beat, broker, eta, limits, otlp, queues
from .context import Context
from .result import FAIL, OK, SKIPPED, WARN, Result, exit_status, summary

__all__ = ["CHECKS", "FAIL", "OK", "SKIPPED", "WARN", "Check", "Context", "Result", "diagnose", "run"]


def _check_failed(ctx: Context, exc: BaseException, name: str) -> Result:
    return Result(
        name,
        FAIL,
        f"the check itself failed: {describe(exc, ctx.secrets())}",
        "Run it again with --timeout 10; if it persists, report it with this line.",
    )


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], Result | list[Result]]
    # Started before the others in its own thread (it needs nothing they find out).
    background: bool = False
    # The line for an error the check raised (or a background check that did not finish in time).
    on_error: Callable[[Context, BaseException], Result] | None = None

    def error(self, ctx: Context, exc: BaseException) -> list[Result]:
        return [self.on_error(ctx, exc) if self.on_error else _check_failed(ctx, exc, self.name)]


CHECKS: tuple[Check, ...] = (
    Check("settings", app.check_settings),
    Check("app", app.check_app),
    Check("broker", broker.check_broker),
    Check("workers", broker.check_workers),
    Check("queues", queues.check_queues),
    Check("beat", beat.check_beat),
    Check("eta", eta.check_eta),
    Check("otlp", otlp.check_otlp, background=True, on_error=otlp.failure),
    Check("time_limits", limits.check_time_limits),
    Check("memory_limit", limits.check_memory_limit),
)


def _timed(check: Check, ctx: Context) -> list[Result]:
    """Run one check; an error is its failure line, never a traceback. Sets ``seconds`` on its lines."""
    started = time.monotonic()
    try:
        outcome = check.run(ctx)
        results = [outcome] if isinstance(outcome, Result) else list(outcome)
    except Exception as exc:  # noqa: BLE001
        results = check.error(ctx, exc)
    for result in results:
        result.seconds = round(time.monotonic() - started, 3)
    return results


def diagnose(ctx: Context, checks: Sequence[Check] = CHECKS) -> list[Result]:
    """Every check's results, in the order of ``checks``."""
    background: dict[str, Future[Sample]] = {
        c.name: Probe(functools.partial(_timed, c, ctx), ttl=0, name=f"doctor-{c.name}").future()
        for c in checks
        if c.background
    }
    results: list[Result] = []
    for check in checks:
        if not check.background:
            results += _timed(check, ctx)
            continue
        try:  # urlopen's timeout does not bound name resolution: the wait is bounded here
            results += background[check.name].result(ctx.timeout + 1).value
        except Exception as exc:  # noqa: BLE001
            late = check.error(ctx, exc)
            for result in late:
                result.seconds = ctx.timeout + 1
            results += late
    return results


def _quiet_libraries() -> None:
    """kombu and celery log connection retries with tracebacks; doctor reports them in one line instead."""
    for name in ("kombu", "celery", "amqp", "redis", "urllib3"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def run(
    app_path: str | None = None,
    broker: str | None = None,
    as_json: bool = False,
    timeout: float | None = None,
    queues: list[str] | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Print one line per check (or a JSON list); 1 when any check failed, 2 on a usage error."""
    _quiet_libraries()
    ctx = Context.create(app_path, broker, timeout=timeout, queues=queues)
    if not app_path and not ctx.broker_url:
        print("otel-agensium doctor: give -A/--app or --broker (or AGENSIUM_BROKER_URL)", file=sys.stderr)
        return 2
    results = diagnose(ctx)
    if as_json:
        print(json.dumps([asdict(r) for r in results], sort_keys=True, default=str), file=out, flush=True)
    else:
        for result in results:
            print(result.line(), file=out, flush=True)
        print(summary(results), file=out, flush=True)
    return exit_status(results)
