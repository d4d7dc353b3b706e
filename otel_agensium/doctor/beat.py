"""Check ``beat``: the app's ``beat_schedule`` against what beat reported it sent (Redis brokers)."""

from __future__ import annotations

import time

from ..celery.beat import beat_verdict, read_status, status_key
from .broker import skipped_without_broker
from .context import Context
from .result import SKIPPED, Result


def check_beat(ctx: Context) -> Result:
    """``FAIL`` when beat is down or an entry is late by more than ``AGENSIUM_BEAT_TOLERANCE`` s;
    ``warn`` when no beat reported or it runs another schedule (:func:`~otel_agensium.celery.beat.beat_verdict`)."""
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
