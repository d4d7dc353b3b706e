"""Check ``beat``: the app's ``beat_schedule`` against what beat reported it sent (Redis brokers)."""

from __future__ import annotations

import time
from typing import Any

from ..celery.beat import BEAT_FIELD, read_status, status_key
from .broker import skipped_without_broker
from .context import Context
from .result import FAIL, OK, SKIPPED, WARN, Result


def check_beat(ctx: Context) -> Result:
    """``FAIL`` when beat is down or an entry is late by more than ``AGENSIUM_BEAT_TOLERANCE`` s;
    ``warn`` when no beat reported or it runs another schedule (:func:`beat_verdict`)."""
    if not ctx.app_loaded:
        return Result("beat", SKIPPED, "no app loaded")
    skipped = skipped_without_broker(ctx, "beat")
    if skipped is not None:
        return skipped
    if not ctx.celery.is_redis:
        return Result("beat", SKIPPED, "beat reports its status on a Redis broker only")
    status = ctx.wait(lambda: read_status(ctx.celery.redis_client(), ctx.app), "beat")
    verdict, detail, fix, data = beat_verdict(
        ctx.app.conf.beat_schedule, status, float(ctx.settings.beat_tolerance), time.time()
    )
    return Result("beat", verdict, detail, fix, data={**data, "key": status_key(ctx.app)})


def _entries(n: int) -> str:
    return f"{n} {'entry' if n == 1 else 'entries'}"


def _ago(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def beat_verdict(
    schedule: dict[str, Any] | None, status: dict[str, dict[str, Any]], tolerance: float, now: float
) -> tuple[str, str, str | None, dict[str, Any]]:
    """Compare the app's ``beat_schedule`` with what beat reported: (verdict, detail, fix, data).

    Verdicts as ``otel-agensium doctor`` prints them: ``FAIL`` when beat is down (its next
    promised tick is more than ``tolerance`` s past) or an entry is late (due more than
    ``tolerance`` s ago and not sent); ``warn`` when no beat reported, or beat runs another
    schedule than the app's; ``ok`` otherwise; ``skipped`` when there is no schedule at all.
    """
    schedule = dict(schedule or {})
    entries = {name: figures for name, figures in status.items() if name != BEAT_FIELD}
    data: dict[str, Any] = {"entries": entries, "beat": status.get(BEAT_FIELD)}
    if not schedule and not entries:
        return SKIPPED, "the app has no beat_schedule and no beat reported", None, data
    if not status:
        return (
            WARN,
            f"the app's beat_schedule has {_entries(len(schedule))} but no beat has reported",
            "Run beat under opentelemetry-instrument (opentelemetry-instrument celery -A <app> beat), or "
            "call otel_agensium.configure() in the process that runs it; check that it is running.",
            data,
        )
    problems: list[str] = []
    late: list[str] = []
    next_tick = (status.get(BEAT_FIELD) or {}).get("next_tick")
    if isinstance(next_tick, (int, float)) and now - next_tick > tolerance:
        problems.append(f"beat is down: it promised to wake up {_ago(now - next_tick)} ago")
    for name in schedule:
        figures = entries.get(name) or {}
        due = figures.get("next_due")
        if isinstance(due, (int, float)) and now - due > tolerance:
            sent = figures.get("last_sent")
            late.append(
                f"{name} due {_ago(now - due)} ago, last sent "
                + (f"{_ago(now - sent)} ago" if isinstance(sent, (int, float)) else "never")
            )
    if late:
        problems.append("late: " + "; ".join(late))
    unknown = sorted(set(schedule) - set(entries))
    extra = sorted(n for n in set(entries) - set(schedule) if not n.startswith("celery."))
    sent = [
        f"{name} sent {figures.get('sends', 0)}x"
        + (f", lag {figures['lag'] * 1000:.1f} ms" if isinstance(figures.get("lag"), (int, float)) else "")
        for name, figures in sorted(entries.items())
        if name in schedule
    ]
    summary = f"{_entries(len(schedule))}; " + "; ".join(sent)
    data.update(late=late, not_reported=unknown, not_in_schedule=extra)
    if problems:
        return (
            FAIL,
            "; ".join(problems) + f" ({summary})",
            "Check the beat process (logs, `celery -A <app> inspect ping` does not cover beat) and restart it; "
            "exactly one beat must run per schedule.",
            data,
        )
    if unknown or extra:
        parts = ([f"beat has not reported {', '.join(unknown)}"] if unknown else []) + (
            [f"beat sends {', '.join(extra)}, not in this app's beat_schedule"] if extra else []
        )
        return (
            WARN,
            "; ".join(parts) + f" ({summary})",
            "Beat runs another schedule than this app's: restart it with this code, or check -A.",
            data,
        )
    return OK, summary, None, data
