"""tasks_app's tasks, in a worker whose parent process records every module its other threads import.

A prefork parent forks children while its export and metric threads run. A module one of
those threads is importing at that moment stays locked in the child (its import lock is
copied held, and no thread in the child will release it): the child's first export that
imports the same module waits forever, and that child's telemetry is lost without a word.
So nothing may be imported for the first time off the main thread once ``configure()`` has
run. The recorder is installed when the worker imports this app, after opentelemetry-instrument
configured otel-agensium; at worker shutdown the parent writes what it saw to
``TEST_IMPORT_LOG`` as JSON lines ``[thread name, module]`` (tests/test_fork_imports.py).
"""

import json
import os
import sys
import threading

from celery import signals

from tests.apps.tasks_app import app

__all__ = ["app"]

_PARENT = os.getpid()
_seen: list[tuple[str, str]] = []


class _Recorder:
    """A meta path finder that finds nothing: Python asks it only for modules not yet imported."""

    def find_spec(self, name, path=None, target=None):
        if os.getpid() == _PARENT and threading.current_thread() is not threading.main_thread():
            _seen.append((threading.current_thread().name, name))
        return None


_RECORDER = _Recorder()
sys.meta_path.insert(0, _RECORDER)


@signals.worker_ready.connect(weak=False)
def _parent_span(**_: object) -> None:
    """A span in the parent too (an app may trace its start-up): its export thread runs as well."""
    from opentelemetry import trace

    with trace.get_tracer("import_watch_app").start_as_current_span("worker ready"):
        pass


@signals.worker_shutdown.connect(weak=False)
def _write(**_: object) -> None:
    if os.getpid() == _PARENT:
        sys.meta_path.remove(_RECORDER)  # the final flush after this is not watched: no fork follows
        with open(os.environ["TEST_IMPORT_LOG"], "w") as out:
            for entry in _seen:
                out.write(json.dumps(entry) + "\n")
