"""Checks ``time_limits`` and ``memory_limit``: what stops a stuck or leaking task."""

from __future__ import annotations

from .context import Context
from .result import OK, SKIPPED, WARN, Result, names, plural

_TIME_FIX = (
    "Set task_soft_time_limit (the task gets SoftTimeLimitExceeded and can clean up) and task_time_limit "
    "a little higher (the child is killed), in the app's config or per task, or start workers with "
    "--soft-time-limit/--time-limit."
)


def check_time_limits(ctx: Context) -> Result:
    if not ctx.app_loaded:
        return Result("time_limits", SKIPPED, "no app loaded")
    conf = ctx.app.conf
    soft, hard = conf.task_soft_time_limit, conf.task_time_limit
    tasks = ctx.tasks()
    unlimited = sorted(
        name
        for name, task in tasks.items()
        if not (hard or soft or getattr(task, "time_limit", None) or getattr(task, "soft_time_limit", None))
    )
    data = {"task_soft_time_limit": soft, "task_time_limit": hard, "tasks_without_limit": unlimited}
    if soft and hard and soft >= hard:
        return Result(
            "time_limits",
            WARN,
            f"task_soft_time_limit={soft:g} s is not below task_time_limit="
            f"{hard:g} s: the soft limit never fires first",
            _TIME_FIX,
            data=data,
        )
    if hard or soft:
        parts = [
            f"task_soft_time_limit={soft:g} s" if soft else "no task_soft_time_limit",
            f"task_time_limit={hard:g} s" if hard else "no task_time_limit",
        ]
        if not hard:
            return Result(
                "time_limits",
                WARN,
                ", ".join(parts) + ": a task that catches SoftTimeLimitExceeded or blocks in C code is never stopped",
                _TIME_FIX,
                data=data,
            )
        return Result("time_limits", OK, ", ".join(parts), data=data)
    if tasks and not unlimited:
        return Result(
            "time_limits", OK, f"no app-wide limit; all {plural(len(tasks), 'task')} set their own", data=data
        )
    return Result(
        "time_limits",
        WARN,
        f"no task_time_limit / task_soft_time_limit; {len(unlimited)} of {plural(len(tasks), 'task')} "
        f"without a limit of their own ({names(unlimited, 4)}): a stuck task holds a worker slot "
        "forever (command-line limits of the workers are not visible here)",
        _TIME_FIX,
        data=data,
    )


def check_memory_limit(ctx: Context) -> Result:
    if not ctx.app_loaded:
        return Result("memory_limit", SKIPPED, "no app loaded")
    conf = ctx.app.conf
    kib, tasks = conf.worker_max_memory_per_child, conf.worker_max_tasks_per_child
    data = {"worker_max_memory_per_child_kib": kib, "worker_max_tasks_per_child": tasks}
    if kib:
        return Result(
            "memory_limit",
            OK,
            f"worker_max_memory_per_child={kib} KiB ({kib / 1024:.0f} MiB): a child "
            "above it is replaced after its current task",
            data=data,
        )
    also = f" (worker_max_tasks_per_child={tasks} recycles children by count only)" if tasks else ""
    return Result(
        "memory_limit",
        WARN,
        f"no worker_max_memory_per_child{also}: a leaking task grows its child until the OOM killer "
        "stops it (a --max-memory-per-child flag on the workers is not visible here)",
        "Set worker_max_memory_per_child in KiB (e.g. 500000) or start workers with "
        "--max-memory-per-child=500000, and watch celery_worker_process_resident_memory_bytes.",
        data=data,
    )
