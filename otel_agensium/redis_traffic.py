"""Redis spans for the calls a task or request makes, not for Celery's own traffic.

Plain OpenTelemetry records every Redis command, and most of them are Celery's:
broker polling (BRPOP), kombu's acknowledgement bookkeeping (the ``unacked`` hash),
publishing, binding look-ups and result-backend writes. Those add most of the spans
and much of the per-task cost. This module wraps redis-py outside the contrib
instrumentor and runs a command with instrumentation suppressed when

* no span is active (polling, acks and heartbeats run outside any trace), or
* the current span is a Celery publish span (the message send itself), or
* its first key is one of Celery's or kombu's own.

Everything else (the task's own Redis calls) is traced by the contrib instrumentor.
A failure inside the decision is counted and logged once (:func:`~otel_agensium.errors.report`)
and the command runs untraced: these wrappers sit on every Redis call of the host.
"""

from __future__ import annotations

from typing import Any

import wrapt
from opentelemetry import context, trace
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.utils import _SUPPRESS_INSTRUMENTATION_KEY, unwrap
from opentelemetry.trace import TracerProvider

from .errors import report
from .integration import Integration

CELERY_KEY_PREFIXES = (
    b"celery-task-meta-",
    b"celery-taskset-meta-",
    b"chord-unlock",
    b"_kombu.",
    b"unacked",
    b"_celery",
)
_PREFIXES_STR = tuple(p.decode() for p in CELERY_KEY_PREFIXES)
PUBLISH_SPAN_PREFIX = "apply_async/"


def is_celery_key(key: Any) -> bool:
    if isinstance(key, str):
        return key.startswith(_PREFIXES_STR)
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).startswith(CELERY_KEY_PREFIXES)
    return False


def should_trace(command_args: tuple[Any, ...]) -> bool:
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return False
    name = getattr(span, "name", "")
    if name.startswith(PUBLISH_SPAN_PREFIX):
        return False
    return not (len(command_args) > 1 and is_celery_key(command_args[1]))


def _call(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any], trace_it: bool) -> Any:
    """Run a command or pipeline, with every Redis call nested in it suppressed unless ``trace_it``."""
    if trace_it:
        return wrapped(*args, **kwargs)
    token = context.attach(context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        return wrapped(*args, **kwargs)
    finally:
        context.detach(token)


def _execute_command(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        trace_it = should_trace(args)
    except Exception:  # noqa: BLE001 - a bug in the filter never fails the command: it runs untraced
        report("redis_traffic.should_trace")
        trace_it = False
    if trace_it:
        return wrapped(*args, **kwargs)
    # A single command nests no other: skip the instrumentor's wrapper altogether, which is
    # cheaper than attaching a suppression context (this runs for every broker poll and ack).
    original = getattr(wrapped, "__wrapped__", None)
    if original is not None:
        return original(*args, **kwargs)
    return _call(wrapped, args, kwargs, False)


def _execute_pipeline(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        stack = getattr(instance, "command_stack", None) or ()
        first: Any = ()
        if stack:  # entries are (args, options) tuples in redis-py, objects with .args in some forks
            first = stack[0][0] if isinstance(stack[0], tuple) else getattr(stack[0], "args", ())
        trace_it = should_trace(tuple(first))
    except Exception:  # noqa: BLE001 - as above: the pipeline runs, untraced
        report("redis_traffic.should_trace")
        trace_it = False
    return _call(wrapped, args, kwargs, trace_it)


class RedisIntegration(Integration):
    name = "redis"

    def __init__(self, tracer_provider: TracerProvider) -> None:
        super().__init__()
        self.tracer_provider = tracer_provider

    def setup(self) -> None:
        import redis
        import redis.client

        instrumentor = RedisInstrumentor()
        instrumentor.instrument(tracer_provider=self.tracer_provider)
        self.on_uninstall(instrumentor.uninstrument, "RedisInstrumentor.uninstrument")
        # Installed after (outside) the instrumentor's wrappers so it decides first.
        wrapt.wrap_function_wrapper("redis", "Redis.execute_command", _execute_command)
        self.on_uninstall(lambda: unwrap(redis.Redis, "execute_command"), "unwrap Redis.execute_command")
        wrapt.wrap_function_wrapper("redis.client", "Pipeline.execute", _execute_pipeline)
        self.on_uninstall(lambda: unwrap(redis.client.Pipeline, "execute"), "unwrap Pipeline.execute")
