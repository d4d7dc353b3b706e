"""Check ``eta``: countdowns and ETAs longer than the Redis broker's ``visibility_timeout``.

On Redis, kombu keeps a delivered message in its ``unacked`` hash and gives it to another
worker once it has been unacknowledged for ``visibility_timeout`` seconds (default 3600).
A worker holds an ETA/countdown task unacknowledged until its ETA, so a task scheduled
further ahead than that is delivered twice and runs twice (kombu #337, Celery #9882).
This check reads what workers hold now (every ETA in the unacked hash against its
delivery time) and the app's ``beat_schedule`` (entries whose options carry a longer
``countdown``), and warns with both.
"""

from __future__ import annotations

from typing import Any

from ..celery.backlog import VISIBILITY_TIMEOUT, RedisBacklog
from .broker import skipped_without_broker
from .context import Context
from .result import OK, SKIPPED, WARN, Result, names, plural

_FIX = (
    "Raise broker_transport_options={'visibility_timeout': <seconds>} above the longest countdown/ETA the app "
    "uses (workers and producers alike), or keep far-future work out of the broker (beat, or a database row "
    "a periodic task picks up)."
)


def _beat_countdowns(app: Any, limit: float) -> list[str]:
    long = []
    for name, entry in (app.conf.beat_schedule or {}).items():
        countdown = ((entry or {}).get("options") or {}).get("countdown")
        if isinstance(countdown, (int, float)) and countdown > limit:
            long.append(f"beat entry {name} (countdown {countdown:g} s)")
    return long


def eta_verdict(
    visibility_timeout: float, held: int, beyond: list[tuple[str, str, float]], beat_long: list[str]
) -> tuple[str, str, str | None]:
    """(verdict, detail, fix) from what the check read; pure."""
    vt = f"visibility_timeout={visibility_timeout:g} s"
    if not beyond and not beat_long:
        return OK, f"{plural(held, 'task')} held for an ETA/countdown, none further ahead than {vt}", None
    parts = []
    if beyond:
        tasks = sorted({f"{task} on {queue}" for queue, task, _ in beyond})
        longest = max(ahead for _, _, ahead in beyond)
        parts.append(
            f"{plural(len(beyond), 'task')} held with an ETA up to {longest:.0f} s after delivery, beyond "
            f"{vt}: kombu will deliver them again and they will run twice ({names(tasks, 4)})"
        )
    if beat_long:
        parts.append(f"{names(beat_long, 4)} beyond {vt}")
    return WARN, "; ".join(parts), _FIX


def check_eta(ctx: Context) -> Result:
    skipped = skipped_without_broker(ctx, "eta")
    if skipped is not None:
        return skipped
    if not ctx.celery.is_redis:
        return Result("eta", SKIPPED, "visibility_timeout applies to Redis (and SQS) brokers only")
    options = ctx.app.conf.broker_transport_options or {}
    reader = RedisBacklog(ctx.celery.redis_client(), options)
    unacked = ctx.wait(lambda: reader.unacked(delivery_times=True), "eta")
    limit = float(options.get("visibility_timeout") or VISIBILITY_TIMEOUT)
    beat_long = _beat_countdowns(ctx.app, limit) if ctx.app_loaded else []
    held = sum(unacked.eta_held.values())
    verdict, detail, fix = eta_verdict(limit, held, unacked.beyond_visibility, beat_long)
    data = {
        "visibility_timeout": limit,
        "eta_held": dict(unacked.eta_held),
        "beyond_visibility": [
            {"queue": q, "task": t, "seconds_ahead": round(s, 1)} for q, t, s in unacked.beyond_visibility
        ],
        "beat_entries": beat_long,
        "truncated": unacked.truncated,
    }
    return Result("eta", verdict, detail, fix, data=data)
