"""Checks ``settings`` and ``app``: the environment, and importing ``-A`` as a worker does."""

from __future__ import annotations

from ..redact import describe
from ..settings import SETTINGS
from .context import Context
from .result import FAIL, OK, SKIPPED, Result, plural


def check_settings(ctx: Context) -> Result:
    problems = list(ctx.settings.problems)
    if problems:
        return Result(
            "settings",
            FAIL,
            f"{plural(len(problems), 'setting')} invalid, defaults used: " + "; ".join(problems),
            "Correct the variables named above (otel-agensium check lists them).",
            data={"problems": problems},
        )
    return Result("settings", OK, f"{len(SETTINGS)} settings valid")


def check_app(ctx: Context) -> Result:
    """Import the app and its task modules; from here on the broker checks use its broker (or --broker)."""
    from ..celery.queues import CeleryQueues

    result = _load_app(ctx)
    if ctx.app is not None:
        ctx.celery = CeleryQueues(ctx.app, (), timeout=ctx.timeout, inspect_timeout=ctx.inspect_timeout)
        result.data["broker"] = ctx.celery.broker
    return result


def _load_app(ctx: Context) -> Result:
    from ..monitor import load_app

    if not ctx.app_path:
        ctx.app = load_app(None, ctx.broker_url)
        return Result("app", SKIPPED, "no -A: routes, time limits and memory limits not checked")
    try:
        ctx.app = load_app(ctx.app_path, ctx.broker_url)
        ctx.app.loader.import_default_modules()  # the task modules a worker imports
        ctx.app.finalize(auto=True)
    except Exception as exc:  # noqa: BLE001 - "tasks failing immediately": import errors
        ctx.app = load_app(None, ctx.broker_url) if ctx.broker_url else None
        return Result(
            "app",
            FAIL,
            f"cannot import {ctx.app_path}: {describe(exc, ctx.secrets())}",
            f"Fix that import error (try: python -c 'import {ctx.app_path.split(':')[0]}' in "
            "the workers' environment); workers that cannot import a task module reject its "
            "tasks as unregistered.",
        )
    ctx.app_loaded = True
    tasks = ctx.tasks()
    return Result(
        "app",
        OK,
        f"{ctx.app_path} imported with its task modules: {plural(len(tasks), 'task')}",
        data={"tasks": sorted(tasks)},
    )
