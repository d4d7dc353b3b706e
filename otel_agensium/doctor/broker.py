"""Checks ``broker`` (PING, or a kombu connect) and ``workers`` (one ``active_queues`` broadcast)."""

from __future__ import annotations

import time

from ..redact import describe
from . import failures
from .context import Context
from .result import FAIL, OK, SKIPPED, Result, names, plural


def skipped_without_broker(ctx: Context, check: str) -> Result | None:
    """The skipped line of a check that needs the broker, or None when the broker answered."""
    if ctx.broker_ok:
        return None
    reason = "broker unreachable" if ctx.celery is not None else "no broker: the app did not load"
    return Result(check, SKIPPED, reason)


def check_broker(ctx: Context) -> Result:
    if ctx.celery is None:
        return Result("broker", SKIPPED, "the app did not load and no --broker was given")
    broker = ctx.celery.broker
    started = time.monotonic()
    try:
        version = ctx.wait(lambda: _ping(ctx), "broker")
    except Exception as exc:  # noqa: BLE001
        failure = failures.kind(exc)
        return Result(
            "broker",
            FAIL,
            f"{broker}: {failures.what(failure, ctx.timeout)} ({describe(exc, ctx.secrets())})",
            failures.broker_fix(failure, broker, ctx.celery.is_redis),
            data={"broker": broker, "error": failure},
        )
    ctx.broker_ok = True
    ms = (time.monotonic() - started) * 1000
    verb = "answered PING" if ctx.celery.is_redis else "accepted a connection"
    extra = f" (Redis {version})" if version else ""
    return Result("broker", OK, f"{broker} {verb} in {ms:.1f} ms{extra}", data={"broker": broker})


def _ping(ctx: Context) -> str | None:
    """The Redis server version (None elsewhere, or when INFO is forbidden); raises when unreachable."""
    if ctx.celery.is_redis:
        client = ctx.celery.redis_client()
        client.ping()
        try:
            return str(client.info("server").get("redis_version") or "") or None
        except Exception:  # noqa: BLE001 - INFO may be forbidden by an ACL; PING was enough
            return None
    conn = ctx.celery._connection()  # noqa: SLF001 - the same short-timeout connection the gauges use
    try:
        conn.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0.2, interval_max=0.2, timeout=ctx.timeout
        )
    finally:
        conn.release()
    return None


def check_workers(ctx: Context) -> Result:
    skipped = skipped_without_broker(ctx, "workers")
    if skipped is not None:
        return skipped
    try:
        ctx.by_queue = ctx.wait(ctx.celery.workers, "workers", ctx.timeout + ctx.inspect_timeout)
    except Exception as exc:  # noqa: BLE001
        return Result(
            "workers",
            FAIL,
            f"the broadcast failed: {describe(exc, ctx.secrets())}",
            "Check the broker (above) and that workers use the same broker URL.",
        )
    live = sorted({w for consumers in ctx.by_queue.values() for w in consumers})
    window = f"{ctx.inspect_timeout:g} s"
    if not live:
        return Result(
            "workers",
            FAIL,
            f"no worker answered within {window}",
            f"Start workers (celery -A {ctx.app_ref} worker -Q <queues>) and check their logs; they must "
            "use this broker and keep remote control on (worker_enable_remote_control).",
            data={"workers": []},
        )
    return Result(
        "workers", OK, f"{plural(len(live), 'worker')} answered within {window}: {names(live)}", data={"workers": live}
    )
