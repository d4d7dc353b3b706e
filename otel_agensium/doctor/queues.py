"""Check ``queue:<name>``: every queue the app routes to has a live consumer; nothing waits unconsumed.

Queues looked at: the app's routes (``task_routes``, per-task ``queue``, ``task_queues``,
``task_default_queue``), ``--queues`` / ``AGENSIUM_QUEUES`` when set, the queues workers
consume, and on Redis the queues kombu has bound (``_kombu.binding.*``), so a message
sent to a misspelt queue name is found.
"""

from __future__ import annotations

import re

from ..celery.queues import MAX_QUEUES, app_queues
from ..redact import describe
from .broker import skipped_without_broker
from .context import Context
from .result import FAIL, OK, SKIPPED, WARN, Result, names, plural

# Keys of kombu's Redis bindings looked at, at most.
MAX_BINDING_KEYS = 1000
# Queues of Celery's own plumbing: remote control, replies, events.
_PLUMBING = re.compile(r"(\.pidbox$|^celeryev\.|\.reply\.celery\.pidbox$)")


def routed_queues(ctx: Context) -> dict[str, str]:
    """Queue name -> where the app says it sends tasks there (empty without -A)."""
    return app_queues(ctx.app) if ctx.app_loaded else {}


def bound_queues(ctx: Context) -> list[str]:
    """Queues kombu bound on a Redis broker (``_kombu.binding.<exchange>`` sets), plumbing excluded."""
    from kombu.transport.redis import Channel

    options = ctx.app.conf.broker_transport_options or {}
    prefix = str(options.get("global_keyprefix") or "")
    sep = options.get("sep") or Channel.sep
    client = ctx.celery.redis_client()
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


def check_queues(ctx: Context) -> list[Result]:
    skipped = skipped_without_broker(ctx, "queues")
    if skipped is not None:
        return [skipped]
    by_queue = ctx.by_queue
    if by_queue is None:
        return [Result("queues", SKIPPED, "workers could not be asked")]
    expected = routed_queues(ctx)
    for name in ctx.explicit_queues or ():
        expected.setdefault(name, "AGENSIUM_QUEUES")
    found: dict[str, None] = dict.fromkeys(expected)
    found.update(dict.fromkeys(ctx.settings.queues))
    found.update(dict.fromkeys(by_queue))
    if ctx.celery.is_redis:
        try:
            found.update(dict.fromkeys(ctx.wait(lambda: bound_queues(ctx), "bindings")))
        except Exception:  # noqa: BLE001 - the depth read below reports a broken broker
            pass
    queues = list(found)[:MAX_QUEUES]
    try:
        lengths = ctx.wait(lambda: ctx.celery.lengths(queues), "lengths")
        depth_error = None
    except Exception as exc:  # noqa: BLE001
        lengths, depth_error = {}, describe(exc, ctx.secrets())
    results = [
        r
        for r in (_verdict(ctx, name, expected.get(name), by_queue.get(name, []), lengths.get(name)) for name in queues)
        if r is not None
    ]
    if depth_error is not None:
        results.append(
            Result(
                "queues",
                WARN,
                f"depths not read: {depth_error}",
                "Run doctor again; consumers above were checked without depths.",
            )
        )
    elif not results:
        results.append(Result("queues", OK, "no queue is routed to, consumed or holding messages"))
    return results


def _verdict(
    ctx: Context, name: str, routed_by: str | None, consumers: list[str], waiting: int | None
) -> Result | None:
    """One queue's line; None for a known name nobody uses and nothing waits in (not worth a line)."""
    shown = "?" if waiting is None else str(waiting)
    data = {"queue": name, "workers": consumers, "waiting": waiting, "routed": routed_by is not None}
    if consumers:
        return Result(f"queue:{name}", OK, f"consumed by {names(consumers)}; {shown} waiting", data=data)
    if routed_by is not None:
        return Result(
            f"queue:{name}",
            FAIL,
            f"the app sends tasks here ({routed_by}) but no live worker consumes it; {shown} waiting",
            f"Start a worker that consumes it (celery -A {ctx.app_ref} worker -Q {name}) or add {name} "
            "to an existing worker's -Q list.",
            data=data,
        )
    if waiting:
        return Result(
            f"queue:{name}",
            FAIL,
            f"{plural(waiting, 'message')} waiting and no live worker consumes it "
            "(and the app does not route tasks here)",
            f"Start a worker with -Q {name}, or, if {name} is a misspelt or retired queue, fix the queue= "
            f"or task_routes that sends there and purge it (celery -A {ctx.app_ref} purge -Q {name}).",
            data=data,
        )
    return None
