"""Which Redis calls get spans, with real redis-py against a real redis-server, in a fresh process.

Outside any trace nothing is traced, a pipeline with a Lua script included (it sends SCRIPT
EXISTS on its own, through ``Pipeline.immediate_execute_command``); inside a span the task's
single commands get lean CLIENT spans and Celery's own keys none, script calls on them and the
result backend's scripts included.
"""

from __future__ import annotations

import sys

from tests.otlp_receiver import Receiver
from tests.procs import run_json

_SCRIPT = r"""
import json, sys
import otel_agensium
handle = otel_agensium.configure(service_name="redis-traffic", logs=False, metrics=False)
import redis
from opentelemetry import trace

client = redis.Redis.from_url(sys.argv[1])
incr_by = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")

def workload(tag):
    client.set(f"rt:{tag}:plain", 1)
    pipe = client.pipeline()
    incr_by(keys=[f"rt:{tag}:scripted"], args=[2], client=pipe)  # SCRIPT EXISTS, then EVALSHA in the pipeline
    pipe.incr(f"rt:{tag}:piped")
    pipe.execute()
    client.hset("unacked", f"rt:{tag}", 1)  # kombu's own key: never traced
    incr_by(keys=[f"rt:{tag}:direct"], args=[3])  # the app's own script call: EVALSHA on its key
    # a script call on the result backend's group keys (its chord bookkeeping): never traced
    incr_by(keys=[f"celery-taskset-meta-rt-{tag}.j"], args=[1])
    from celery.backends.redis import CHORD_PART_RETURN_LUA
    client.script_load(CHORD_PART_RETURN_LUA)  # loading the backend's script: never traced

client.script_flush()
workload("outside")
with trace.get_tracer("test").start_as_current_span("run/rt") as span:
    client.script_flush()  # a traced command, so the script is loaded again
    workload("inside")
    trace_id = format(span.get_span_context().trace_id, "032x")
handle.force_flush()
handle.shutdown()
print(json.dumps({"trace_id": trace_id}))
"""


def test_only_calls_inside_a_trace_get_spans(redis_server):
    with Receiver() as receiver:
        report, _ = run_json(
            [sys.executable, "-c", _SCRIPT, redis_server.url],
            {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "AGENSIUM_LOG_STDOUT": "false"},
        )
        spans = receiver.spans()
    assert all(s["trace_id"] == report["trace_id"] for s in spans), [(s["name"], s["parent_span_id"]) for s in spans]
    names = sorted(s["name"] for s in spans if s["name"] != "run/rt")
    # SCRIPT FLUSH, SET, the pipeline's own SCRIPT EXISTS and SCRIPT LOAD (lean spans, as single
    # commands), the pipeline itself (contrib's span, named after its commands) and the app's own
    # EVALSHA; none for the script call on Celery's keys or the load of Celery's script.
    assert names == ["EVALSHA", "EVALSHA INCRBY", "SCRIPT EXISTS", "SCRIPT FLUSH", "SCRIPT LOAD", "SET"], names
    assert len(spans) == 7
