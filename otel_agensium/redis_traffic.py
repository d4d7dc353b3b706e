"""Redis spans for the calls a task or request makes, not for Celery's own traffic.

Plain OpenTelemetry records every Redis command, and most of them are Celery's:
broker polling (BRPOP), kombu's acknowledgement bookkeeping (the ``unacked`` hash),
publishing, binding look-ups and result-backend writes. Those add most of the spans
and much of the per-task cost. This module wraps redis-py outside the contrib
instrumentor and runs a command with instrumentation suppressed when

* no span is active (polling, acks and heartbeats run outside any trace), or
* the current span is a Celery publish span (the message send itself), or
* its first key is one of Celery's or kombu's own (for ``EVALSHA`` and the other script
  calls, the first of their keys: the result backend's chord bookkeeping), or it loads
  one of the result backend's Lua scripts (``SCRIPT LOAD``).

Everything else (the task's own Redis calls) is traced. A single command gets a lean
CLIENT span made here (:func:`_traced_command`): named after the command as the contrib
instrumentor names it (``INCRBY``), with the current database semantic conventions set
once at start (``db.system.name``, ``db.operation.name``, ``db.namespace``,
``server.address``, ``server.port``; the connection's part cached per connection pool),
and no statement text: about two thirds of the contrib span's cost, which formats and
sanitizes the statement and sets seven attributes one by one. A pipeline's own immediate
commands (``Pipeline.immediate_execute_command``: ``SCRIPT EXISTS`` before a pipeline with
scripts, commands after ``WATCH``) take the same path. Pipelines, and
``redis.asyncio`` clients, are traced by the contrib instrumentor. A failure inside the
decision is counted and logged once (:func:`~otel_agensium.errors.report`) and the command
runs untraced: these wrappers sit on every Redis call of the host.
"""

from __future__ import annotations

from typing import Any

import wrapt
from opentelemetry import context, trace
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.utils import _SUPPRESS_INSTRUMENTATION_KEY, unwrap
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider

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


# Commands whose first key is not their first argument: EVALSHA sha numkeys key [key ...].
_SCRIPT_CALLS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})
_celery_scripts: frozenset[Any] | None = None


def _is_celery_script(script: Any) -> bool:
    """The Lua of Celery's Redis result backend (its chord bookkeeping), as ``SCRIPT LOAD`` sends it."""
    global _celery_scripts
    if _celery_scripts is None:
        try:
            from celery.backends import redis as backend

            texts = [v for k, v in vars(backend).items() if k.endswith("_LUA") and isinstance(v, str)]
        except ImportError:
            texts = []
        _celery_scripts = frozenset(texts + [t.encode() for t in texts])
    return isinstance(script, (str, bytes)) and script in _celery_scripts


def is_celery_command(command_args: tuple[Any, ...]) -> bool:
    """Celery's or kombu's own command: its first key is theirs (for a script call, the first of
    its KEYS), or it loads one of the result backend's scripts."""
    if len(command_args) < 2:
        return False
    command = command_args[0]
    if command in _SCRIPT_CALLS:
        try:
            return int(command_args[2]) > 0 and is_celery_key(command_args[3])
        except (IndexError, TypeError, ValueError):
            return False
    if command == "SCRIPT LOAD":
        return _is_celery_script(command_args[1])
    return is_celery_key(command_args[1])


def should_trace(command_args: tuple[Any, ...]) -> bool:
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return False
    name = getattr(span, "name", "")
    if name.startswith(PUBLISH_SPAN_PREFIX):
        return False
    return not is_celery_command(command_args)


def _call(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any], trace_it: bool) -> Any:
    """Run a command or pipeline, with every Redis call nested in it suppressed unless ``trace_it``."""
    if trace_it:
        return wrapped(*args, **kwargs)
    token = context.attach(context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        return wrapped(*args, **kwargs)
    finally:
        context.detach(token)


_tracer: trace.Tracer | None = None  # set by RedisIntegration.install
_POOL_ATTRS_MAX = 64
# id(connection pool) -> (pool, the connection's span attributes)
_pool_attrs: dict[int, tuple[Any, dict[str, Any]]] = {}


def _connection_attributes(instance: Any) -> dict[str, Any]:
    pool = getattr(instance, "connection_pool", None)
    entry = _pool_attrs.get(id(pool))
    if entry is not None and entry[0] is pool:
        return entry[1]
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    attrs: dict[str, Any] = {"db.system.name": "redis", "db.namespace": str(kwargs.get("db") or 0)}
    if "path" in kwargs:
        attrs["server.address"] = str(kwargs["path"])
    else:
        attrs["server.address"] = str(kwargs.get("host", "localhost"))
        attrs["server.port"] = int(kwargs.get("port", 6379))
    if len(_pool_attrs) >= _POOL_ATTRS_MAX:
        _pool_attrs.clear()
    _pool_attrs[id(pool)] = (pool, attrs)
    return attrs


def _traced_command(
    tracer: trace.Tracer, original: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run one command inside a lean CLIENT span (see the module docstring)."""
    try:
        name = str(args[0]) if args and args[0] else "redis"
        attrs = {**_connection_attributes(instance), "db.operation.name": name}
        span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs)
    except Exception:  # noqa: BLE001 - the command runs, untraced
        report("redis_traffic.span")
        return original(*args, **kwargs)
    try:
        return original(*args, **kwargs)
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        span.end()


def _execute_command(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        trace_it = should_trace(args) and not context.get_value(_SUPPRESS_INSTRUMENTATION_KEY)
    except Exception:  # noqa: BLE001 - a bug in the filter never fails the command: it runs untraced
        report("redis_traffic.should_trace")
        trace_it = False
    # A single command nests no other: skip the instrumentor's wrapper altogether, which is
    # cheaper than attaching a suppression context (this runs for every broker poll and ack).
    original = getattr(wrapped, "__wrapped__", None)
    if original is None:
        return _call(wrapped, args, kwargs, trace_it)
    tracer = _tracer
    if trace_it and tracer is not None:
        return _traced_command(tracer, original, instance, args, kwargs)
    return original(*args, **kwargs)


def _execute_pipeline(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        outside = not trace.get_current_span().get_span_context().is_valid
    except Exception:  # noqa: BLE001 - decide the long way below
        outside = False
    original = getattr(wrapped, "__wrapped__", None)
    if outside and original is not None:
        # Outside any trace (kombu's acks, every task): untraced, without the instrumentor's
        # wrapper, and without a suppression context: the one command a pipeline can send on
        # its own (SCRIPT EXISTS, through Pipeline.immediate_execute_command) passes through
        # _execute_command too, which leaves it untraced outside a trace.
        return original(*args, **kwargs)
    try:
        stack = getattr(instance, "command_stack", None) or ()
        first: Any = ()
        if stack:  # entries are (args, options) tuples in redis-py, objects with .args in some forks
            first = stack[0][0] if isinstance(stack[0], tuple) else getattr(stack[0], "args", ())
        trace_it = should_trace(tuple(first))
    except Exception:  # noqa: BLE001 - as above: the pipeline runs, untraced
        report("redis_traffic.should_trace")
        trace_it = False
    if trace_it:
        return wrapped(*args, **kwargs)
    return _call(original or wrapped, args, kwargs, False)  # suppressed, as above


class RedisIntegration(Integration):
    name = "redis"

    def __init__(self, tracer_provider: TracerProvider) -> None:
        super().__init__()
        self.tracer_provider = tracer_provider

    def setup(self) -> None:
        global _tracer
        import redis
        import redis.client

        from .version import __version__

        instrumentor = RedisInstrumentor()
        instrumentor.instrument(tracer_provider=self.tracer_provider)
        self.on_uninstall(instrumentor.uninstrument, "RedisInstrumentor.uninstrument")
        _tracer = self.tracer_provider.get_tracer("otel_agensium.redis", __version__)
        self.on_uninstall(_forget_tracer, "forget the lean Redis tracer")
        # Installed after (outside) the instrumentor's wrappers so it decides first.
        wrapt.wrap_function_wrapper("redis", "Redis.execute_command", _execute_command)
        self.on_uninstall(lambda: unwrap(redis.Redis, "execute_command"), "unwrap Redis.execute_command")
        wrapt.wrap_function_wrapper("redis.client", "Pipeline.execute", _execute_pipeline)
        self.on_uninstall(lambda: unwrap(redis.client.Pipeline, "execute"), "unwrap Pipeline.execute")
        wrapt.wrap_function_wrapper("redis.client", "Pipeline.immediate_execute_command", _execute_command)
        self.on_uninstall(
            lambda: unwrap(redis.client.Pipeline, "immediate_execute_command"),
            "unwrap Pipeline.immediate_execute_command",
        )


def _forget_tracer() -> None:
    global _tracer
    _tracer = None
