"""Traces that understand Celery's canvas: chain, group and chord.

What the tracing instrumentation (contrib's ``CeleryInstrumentor`` or any other that makes
the task's run span current between ``task_prerun`` and ``task_postrun``) already gives,
and what this module adds:

* **chain**: Celery publishes the next task of a chain from inside the run of the previous
  one, so each task's publish span is a child of the previous run: the tasks of a chain are
  one trace, nested in order. Nothing to add but the attributes below.
* **group**: the caller publishes every member, so the members' publish spans are siblings
  under the caller's span, and so are their runs. Each run span gets ``celery.group_id``.
* **chord**: the callback is published by whichever header task finishes last (with the
  Redis result backend: from ``on_chord_part_return``, inside that task's run), so its
  parent is that one task, and the others are not in its ancestry. This module links the
  callback's run span to the run span of **every** header task (OpenTelemetry span links,
  attributes ``celery.task_id`` and ``celery.task_name``), so a slow chord shows which
  member held it up:

  1. a header task (its request has ``chord`` and ``group``) stores the context of its run
     span, at ``task_prerun``, in one Redis hash per group (``agensium:chord:<group id>``,
     field = task id; kept one day) on the app's broker when it is Redis;
  2. when the last header task publishes the callback, ``before_task_publish`` recognises
     it (the message's id is the ``task_id`` of the request's ``chord`` signature) and adds
     the header ``agensium_chord_group``;
  3. at the callback's ``task_prerun`` the hash of that group is read (one HGETALL), a
     link added to the current span for each header task, and ``celery.chord_group_id`` set.

Every run span also gets ``celery.parent_id`` and ``celery.root_id`` (Celery's own workflow
ids), so Tempo can search a whole workflow by its root. Needs a Redis broker for the chord
links; chords whose callback is sent by ``celery.chord_unlock`` (result backends without
native chord support) get the attributes but no links.
"""

from __future__ import annotations

import json
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import SpanContext, TraceFlags

from ..errors import guarded
from ..integration import Integration, connect
from .tracing import TASK_ID_ATTRIBUTE, TASK_NAME_ATTRIBUTE, WORKFLOW_ATTRIBUTES

CHORD_HEADER = "agensium_chord_group"
CHORD_KEY = "agensium:chord:{group}"
CHORD_TTL = 24 * 3600
MAX_LINKS = 1000  # span links per callback, at most (a chord header can be large)
LINKED_TASK_ID = TASK_ID_ATTRIBUTE  # a link names the header task as its run span does
LINKED_TASK_NAME = TASK_NAME_ATTRIBUTE
CHORD_GROUP_ID = "celery.chord_group_id"  # on a chord callback's run span: the group it waited for


def _chord_callback_id(chord: Any) -> str | None:
    try:
        return (chord.get("options") or {}).get("task_id")
    except AttributeError:
        return None


class CanvasIntegration(Integration):
    """Workflow attributes on run spans, and chord callbacks linked to their header tasks."""

    name = "celery-canvas"

    def __init__(self, celery: Any = None) -> None:
        """``celery``: the installed CeleryIntegration; with its lean tracing, chords are handled in its run."""
        super().__init__()
        self._clients: dict[int, Any] = {}
        self._celery = celery

    def setup(self) -> None:
        from celery import signals

        celery = self._celery
        if celery is not None and getattr(celery, "_tracing", None) is not None:
            # Lean tracing puts the workflow ids on the run span itself (tracing.py); the
            # chord bookkeeping runs from CeleryIntegration.run once the span is current.
            celery.on_run_started = self._on_run_started
            self.on_uninstall(lambda: setattr(celery, "on_run_started", None), "celery.on_run_started = None")
        else:
            # Connected after the tracing instrumentation's task_prerun: its run span is current here.
            connect(self, signals.task_prerun, self._on_prerun)
        connect(self, signals.before_task_publish, self._on_before_publish)

    # -- Redis ---------------------------------------------------------------------------
    def _client(self, app: Any) -> Any:
        client = self._clients.get(id(app))
        if client is None:
            from .queues import CeleryQueues

            watched = CeleryQueues(app, (), timeout=1.0)
            client = watched.redis_client() if watched.is_redis else False
            self._clients[id(app)] = client
        return client

    # -- signal handlers -------------------------------------------------------------------
    @guarded
    def _on_prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if task is None or task_id is None:
            return
        span = trace.get_current_span()
        if not span.is_recording():
            return
        request = task.request
        for key, attribute in WORKFLOW_ATTRIBUTES:  # what lean tracing sets at the span's start
            value = getattr(request, key, None)
            if isinstance(value, str) and value:
                span.set_attribute(attribute, value)
        group = getattr(request, "group", None)
        self._chord(task, task_id, group, getattr(request, "chord", None), getattr(request, CHORD_HEADER, None), span)

    @guarded
    def _on_run_started(self, task: Any, task_id: Any, request: dict, span: Any) -> None:
        """The chord part of :meth:`_on_prerun`, from the request dict (lean tracing; ids are set already)."""
        if span.is_recording():
            self._chord(task, task_id, request.get("group"), request.get("chord"), request.get(CHORD_HEADER), span)

    def _chord(self, task: Any, task_id: str, group: Any, chord: Any, chord_group: Any, span: Any) -> None:
        """A chord header task stores its span context; a chord callback links to its header tasks'."""
        if group and chord:
            self._store_member(task.app, group, task_id, task.name, span.get_span_context())
        if isinstance(chord_group, str) and chord_group:
            span.set_attribute(CHORD_GROUP_ID, chord_group)
            self._link_members(task.app, chord_group, span)

    def _store_member(self, app: Any, group: str, task_id: str, name: str, context: SpanContext) -> None:
        client = self._client(app)
        if not client:
            return
        value = json.dumps(
            {
                "trace_id": f"{context.trace_id:032x}",
                "span_id": f"{context.span_id:016x}",
                "flags": int(context.trace_flags),
                "task": name,
            }
        )
        key = CHORD_KEY.format(group=group)
        with suppress_instrumentation():  # our own bookkeeping makes no spans
            pipe = client.pipeline(transaction=False)
            pipe.hset(key, task_id, value)
            pipe.expire(key, CHORD_TTL)
            pipe.execute()

    def _link_members(self, app: Any, group: str, span: Any) -> None:
        client = self._client(app)
        if not client:
            return
        with suppress_instrumentation():
            members = client.hgetall(CHORD_KEY.format(group=group)) or {}
        for task_id, raw in sorted(members.items())[:MAX_LINKS]:
            try:
                member = json.loads(raw)
                context = SpanContext(
                    int(member["trace_id"], 16),
                    int(member["span_id"], 16),
                    is_remote=True,
                    trace_flags=TraceFlags(int(member.get("flags", 1))),
                )
            except (ValueError, KeyError, TypeError):
                continue
            task_id = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
            span.add_link(context, {LINKED_TASK_ID: task_id, LINKED_TASK_NAME: str(member.get("task", ""))})

    @guarded
    def _on_before_publish(self, headers: dict | None = None, **_: Any) -> None:
        """Mark the chord callback as the last header task publishes it."""
        if headers is None:
            return
        from celery import current_task

        request = getattr(current_task, "request", None) if current_task else None
        chord, group = getattr(request, "chord", None), getattr(request, "group", None)
        if chord and group and headers.get("id") and headers.get("id") == _chord_callback_id(chord):
            headers[CHORD_HEADER] = group
