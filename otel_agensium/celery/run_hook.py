"""One call around each task run, in place of Celery's ``task_prerun``/``task_postrun`` signals.

Celery runs a task through a tracer function that ``celery.app.trace.build_tracer`` builds
once per task (the worker keeps it as ``task.__trace__``; ``Task.apply`` builds one for an
eager run). Its signals cost a dispatch each (a lock, the receivers list, a keyword dict:
about 3.5 us per signal in a worker, before any handler runs) and the handlers then read
the request back through Celery's request stack. Here ``build_tracer`` is wrapped instead:
the tracer it returns is wrapped in one function that receives the task id, the task and
the request dict directly and calls the integration's ``run(inner, task, task_id, args,
kwargs, request)``, which starts the run span, calls Celery's own tracer, and records the
outcome. Nothing about the run changes: Celery's tracer still pushes the request, sends the
signals other receivers listen to, stores the result and handles retries and errors.

``build_tracer`` is replaced where Celery calls it by name: in ``celery.app.trace`` (its
``trace_task``; ``Task.apply`` and the prefork pool import it from there when they build)
and in ``celery.worker.consumer.consumer`` (the solo and thread pools' tracers). Tracers Celery
built before :func:`install` (``configure()`` called from ``worker_process_init``, after
the prefork child built them) are wrapped in place. :func:`uninstall` puts the original
back; a tracer already wrapped then calls straight through.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# The modules whose global name ``build_tracer`` Celery calls.
CALLERS = ("celery.app.trace", "celery.worker.consumer.consumer")

# run(inner, task, task_id, args, kwargs, request) -> what inner returned
Run = Callable[[Callable[..., Any], Any, Any, Any, Any, Any], Any]

_run: Run | None = None
_original: Callable[..., Any] | None = None


def _wrap(inner: Callable[..., Any], task: Any) -> Callable[..., Any]:
    def trace_task(uuid: Any, args: Any, kwargs: Any, request: Any = None) -> Any:
        run = _run
        if run is None:
            return inner(uuid, args, kwargs, request)
        return run(inner, task, uuid, args, kwargs, request)

    trace_task.__wrapped__ = inner  # type: ignore[attr-defined]
    trace_task._agensium_run_hook = True  # type: ignore[attr-defined]
    return trace_task


def _build_tracer(name: Any, task: Any, *args: Any, **kwargs: Any) -> Callable[..., Any]:
    assert _original is not None
    return _wrap(_original(name, task, *args, **kwargs), task)


def _wrap_built_tracers() -> int:
    """Wrap the tracers Celery built before install (``configure()`` called in ``worker_process_init``:
    the prefork child builds every task's tracer first). Reads each app's task registry without
    finalizing the app. Returns how many were wrapped."""
    from celery._state import _get_active_apps

    wrapped = 0
    for app in list(_get_active_apps()):
        for task in list(getattr(app, "_tasks", {}).values()):
            built = task.__dict__.get("__trace__")
            if callable(built) and not getattr(built, "_agensium_run_hook", False):
                task.__trace__ = _wrap(built, task)
                wrapped += 1
    return wrapped


def install(run: Run) -> None:
    """Wrap every tracer Celery builds from now on; ``run`` is called once per task run."""
    global _run, _original
    if _run is not None:
        raise RuntimeError("otel-agensium: the Celery run hook is already installed")
    modules = [importlib.import_module(name) for name in CALLERS]
    original = getattr(modules[0], "build_tracer")  # noqa: B009 - modules typed as ModuleType
    for module in modules:
        if getattr(module, "build_tracer") is not original:  # noqa: B009
            raise RuntimeError(f"otel-agensium: {module.__name__}.build_tracer is not Celery's own; not wrapped")
    _original = original
    for module in modules:
        setattr(module, "build_tracer", _build_tracer)  # noqa: B010
    _run = run
    _wrap_built_tracers()


def uninstall() -> None:
    global _run, _original
    _run = None
    if _original is None:
        return
    for name in CALLERS:
        module = importlib.import_module(name)
        if getattr(module, "build_tracer") is _build_tracer:  # noqa: B009
            setattr(module, "build_tracer", _original)  # noqa: B010
    _original = None


def outcome(result: Any) -> str | None:
    """The state of a run from what Celery's tracer returned: ``(R, I, T, Rstr)``.

    ``I`` (the trace info) is set for every state but success; ``T`` (the run time) only
    once a success has been stored. Neither: the run was skipped (a redelivered task that
    already succeeded) and is not counted.
    """
    try:
        _, info, runtime, _ = result
    except (TypeError, ValueError):
        return None
    if info is not None:
        return getattr(info, "state", None)
    return "SUCCESS" if runtime is not None else None
