"""JSON lines and OTLP log records from a real prefork worker on a real Redis, plus in-process checks."""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime

import pytest

from otel_agensium import logs
from otel_agensium.providers import build_resource
from otel_agensium.settings import load
from tests.otlp_receiver import attrs, wait_for
from tests.procs import celery_worker

SERVICE = "worker-logs"
SERVICE_OFF = "worker-logsoff"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
SEED_FIELDS = ("timestamp", "level", "logger", "message", "module", "function", "line")
CONTEXT = ("task_id", "task_name", "trace_id", "span_id")


def json_lines(proc) -> list[dict]:
    """Every line of the worker's output that is a JSON object; a line starting with '{' must parse."""
    out = []
    for line in list(proc.lines):
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def records_with_scope(receiver) -> list[dict]:
    """OTLP log records with their scope name (the logger name) and resource."""
    out = []
    for req in list(receiver.logs):
        for rl in req.resource_logs:
            resource = attrs(rl.resource.attributes)
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    out.append(
                        {
                            "scope": sl.scope.name,
                            "resource": resource,
                            "body": rec.body.string_value,
                            "attributes": attrs(rec.attributes),
                            "trace_id": rec.trace_id.hex(),
                            "span_id": rec.span_id.hex(),
                            "severity": rec.severity_text,
                            "severity_number": rec.severity_number,
                        }
                    )
    return out


@pytest.fixture(scope="module")
def tasks(redis_server):
    from tests.apps import tasks_app

    tasks_app.app.conf.broker_url = redis_server.url
    tasks_app.app.conf.result_backend = redis_server.url
    return tasks_app


@pytest.fixture(scope="module")
def worker(redis_server, receiver):
    proc = celery_worker("tests.apps.tasks_app", redis_server.url, receiver.endpoint, "logs", name="logs")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def workload(worker, tasks, receiver):
    sleeps = [tasks.log_sleep.apply_async((1.0,), queue="logs") for _ in range(2)]  # run at the same time
    fail = tasks.log_fail.apply_async(queue="logs")
    bound = tasks.log_bound.apply_async((42,), queue="logs")
    handlers = tasks.log_handlers.apply_async(queue="logs")
    sleep_ids = [r.get(timeout=60) for r in sleeps]
    with pytest.raises(ValueError):
        fail.get(timeout=60, propagate=True)
    assert bound.get(timeout=60) == 42
    ids = {"sleep": sleep_ids, "fail": fail.id, "bound": bound.id, "handlers": handlers.get(timeout=60)}

    def run_spans():
        found = {
            s["attributes"].get("celery.task_id"): s
            for s in receiver.spans()
            if s["name"] in ("run/t.log_sleep", "run/t.log_fail")
        }
        wanted = [*sleep_ids, fail.id]
        return {i: found[i] for i in wanted} if all(i in found for i in wanted) else None

    ids["runs"] = wait_for(run_spans, timeout=30)
    return ids


def lines_of(worker, task_id: str) -> list[dict]:
    return [line for line in json_lines(worker) if line.get("task_id") == task_id]


def test_task_lines_are_json_with_task_and_trace_ids(worker, workload):
    for task_id in workload["sleep"]:
        run = workload["runs"][task_id]
        lines = lines_of(worker, task_id)
        messages = [line["message"] for line in lines]
        assert f"log_sleep before {task_id}" in messages
        assert f"log_sleep task logger {task_id}" in messages  # get_task_logger: Celery's non-propagating logger
        assert f"log_sleep after {task_id}" in messages
        assert any(m.startswith(f"Task t.log_sleep[{task_id}] succeeded") for m in messages)  # Celery's own
        for line in lines:
            for name in SEED_FIELDS:
                assert name in line, (name, line)
            assert TIMESTAMP.match(line["timestamp"]), line["timestamp"]
            assert line["task_name"] == "t.log_sleep"
            assert HEX32.match(line["trace_id"]) and HEX16.match(line["span_id"])
            assert line["trace_id"] == run["trace_id"]  # the task's run span, as exported over OTLP
            assert line["span_id"] == run["span_id"]
            assert line["service"] == SERVICE
            assert "exception" not in line
        after = next(line for line in lines if line["message"].startswith("log_sleep after"))
        assert after["slept"] == 1.0 and after["detail"] == {"k": [1, 2]}  # extra={...} as JSON
        assert (after["logger"], after["module"], after["function"], after["level"]) == (
            "tasks_app",
            "tasks_app",
            "log_sleep",
            "INFO",
        )
        assert isinstance(after["line"], int)


def test_concurrent_tasks_never_carry_each_others_ids(worker, workload):
    a, b = workload["sleep"]
    runs = workload["runs"]
    assert runs[a]["trace_id"] != runs[b]["trace_id"]

    def at(task_id, word):
        line = next(x for x in json_lines(worker) if x["message"] == f"log_sleep {word} {task_id}")
        return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))

    # the two tasks really overlapped: each started before the other finished
    assert at(a, "before") < at(b, "after") and at(b, "before") < at(a, "after")
    for line in json_lines(worker):
        for own, other in ((a, b), (b, a)):
            if own in line["message"] and line["logger"] != "celery.worker.strategy":  # the parent's "received"
                assert line["task_id"] == own, line
                assert line["trace_id"] == runs[own]["trace_id"], line
            if line.get("task_id") == own:
                assert other not in json.dumps(line), line


def test_each_line_is_printed_once_as_json(worker, workload):
    for task_id in workload["sleep"]:
        for text in (f"log_sleep before {task_id}", f"log_sleep task logger {task_id}"):
            raw = [line for line in worker.lines if text in line]
            assert len(raw) == 1, raw  # no plain copy from Celery's own console handler
            assert json.loads(raw[0])["message"] == text


def test_otlp_records_carry_the_same_ids(receiver, worker, workload):
    def records():
        mine = [r for r in records_with_scope(receiver) if r["attributes"].get("task_id") in workload["sleep"]]
        return mine if len(mine) >= 8 else None  # before, task logger, after, succeeded for each task

    found = wait_for(records, timeout=30)
    for task_id in workload["sleep"]:
        run = workload["runs"][task_id]
        mine = [r for r in found if r["attributes"]["task_id"] == task_id]
        bodies = [r["body"] for r in mine]
        assert len(bodies) == len(set(bodies)), bodies  # no duplicate records from double handlers
        assert f"log_sleep before {task_id}" in bodies and f"log_sleep task logger {task_id}" in bodies
        for rec in mine:
            assert rec["attributes"]["task_name"] == "t.log_sleep"
            assert rec["trace_id"] == run["trace_id"] and rec["span_id"] == run["span_id"]
            assert rec["resource"]["service.name"] == SERVICE
            assert rec["severity"] == "INFO" and rec["severity_number"] == 9
            assert not {"trace_id", "span_id", "service"} & set(rec["attributes"])  # context, not attributes
        after = next(r for r in mine if r["body"].startswith("log_sleep after"))
        assert after["attributes"]["slept"] == 1.0
        assert json.loads(after["attributes"]["detail"]) == {"k": [1, 2]}
        assert after["attributes"]["code.function.name"] == "log_sleep"


def test_exporter_logging_is_not_exported(receiver, workload):
    scopes = {r["scope"] for r in records_with_scope(receiver)}
    assert scopes, "records arrived"
    assert not [s for s in scopes if s.startswith(("opentelemetry", "urllib3", "requests"))], scopes


def test_exception_in_task_is_one_json_line(receiver, worker, workload):
    task_id = workload["fail"]
    with_exception = [line for line in lines_of(worker, task_id) if "exception" in line]
    assert len(with_exception) == 1, with_exception
    line = with_exception[0]
    assert line["level"] == "ERROR" and line["task_name"] == "t.log_fail"
    assert line["trace_id"] == workload["runs"][task_id]["trace_id"]
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].rstrip().endswith("ValueError: log boom")
    # the traceback is inside JSON strings only: no raw multi-line record
    for raw in worker.lines:
        if "log boom" in raw or "Traceback" in raw:
            assert raw.startswith("{") and json.loads(raw), raw

    def otlp_error():
        return [
            r
            for r in records_with_scope(receiver)
            if r["attributes"].get("task_id") == task_id and "exception.type" in r["attributes"]
        ]

    (record,) = wait_for(otlp_error, timeout=30)
    assert record["attributes"]["exception.type"] == "ValueError"
    assert record["attributes"]["exception.message"] == "log boom"
    assert "Traceback (most recent call last)" in record["attributes"]["exception.stacktrace"]
    assert record["severity"] == "ERROR" and record["trace_id"] == line["trace_id"]


def test_bound_fields_only_inside_the_block(worker, workload):
    lines = {line["message"]: line for line in lines_of(worker, workload["bound"])}
    inside, outside = lines["log_bound inside"], lines["log_bound outside"]
    assert (inside["user_id"], inside["agent"]) == (42, "profile")
    assert "user_id" not in outside and "agent" not in outside
    assert outside["task_name"] == "t.log_bound"


def test_celery_logging_setup_keeps_our_handlers_once(workload):
    handlers = workload["handlers"]
    # Celery replaced the root handlers and set up its task logger in the worker; ours are back, once
    assert handlers["root"] == ["ours:logging.StreamHandler", "ours:otel_agensium.logs.otlp.OTLPHandler"], handlers
    task_logger = [h for h in handlers["celery.task"] if h != "logging.NullHandler"]
    assert task_logger == ["ours:logging.StreamHandler", "ours:otel_agensium.logs.otlp.OTLPHandler"], handlers


def test_lines_outside_tasks_have_no_stale_context(worker, workload):
    # the parent's own lines never ran a task
    received = [line for line in json_lines(worker) if line["logger"] == "celery.worker.strategy"]
    assert received and all(not set(CONTEXT) & set(line) for line in received)
    # each pool child logs once more on shutdown, after it ran tasks: nothing left from them
    worker.stop()
    exits = [line for line in json_lines(worker) if line["message"] == "tasks_app child exiting"]
    assert exits, worker.output[-3000:]
    for line in exits:
        assert not set(CONTEXT) & set(line), line
        assert line["service"] == SERVICE


# -- AGENSIUM_LOGS=false ----------------------------------------------------------------------


def test_logs_off_exports_nothing_and_installs_no_handler(redis_server, receiver, tasks):
    proc = celery_worker(
        "tests.apps.tasks_app",
        redis_server.url,
        receiver.endpoint,
        "logs_off",
        name="logsoff",
        concurrency=1,
        env={"AGENSIUM_LOGS": "false"},
    )
    try:
        ok = tasks.ok.apply_async((7,), queue="logs_off")
        handlers = tasks.log_handlers.apply_async(queue="logs_off").get(timeout=60)
        ok.get(timeout=60)
        # spans do arrive from this worker: the exporters work, only logs are off
        wait_for(
            lambda: [
                s
                for s in receiver.spans()
                if s["name"] == "run/t.ok" and s["attributes"].get("celery.task_id") == ok.id
            ],
            timeout=30,
        )
        time.sleep(1.0)  # well past OTEL_BLRP_SCHEDULE_DELAY=100ms
        assert [r for r in records_with_scope(receiver) if r["resource"].get("service.name") == SERVICE_OFF] == []
        assert not any(h.startswith("ours:") for h in handlers["root"] + handlers["celery.task"]), handlers
        assert not any("OTLPHandler" in h for h in handlers["root"] + handlers["celery.task"]), handlers
        assert [line for line in json_lines(proc) if line.get("logger") == "tasks_app"] == []
        assert sum("ok task running with 7" in line for line in proc.lines) == 1  # Celery's own format
    finally:
        proc.stop()


def test_celery_logfile_and_rotating_file_get_json(redis_server, receiver, tasks, tmp_path):
    celery_log, our_log = tmp_path / "celery.log", tmp_path / "logs" / "agensium.log"
    proc = celery_worker(
        "tests.apps.tasks_app",
        redis_server.url,
        receiver.endpoint,
        "logs_file",
        name="logsfile",
        concurrency=1,
        extra_args=["--logfile", str(celery_log)],
        env={"AGENSIUM_LOG_FILE": str(our_log), "AGENSIUM_OTLP": "false"},
    )
    try:
        ok = tasks.ok.apply_async((8,), queue="logs_file")
        ok.get(timeout=60)
        wait_for(lambda: our_log.exists() and "ok task running with 8" in our_log.read_text(), timeout=15)
    finally:
        proc.stop()
    for sink in (
        celery_log.read_text().splitlines(),
        our_log.read_text().splitlines(),
        [line for line in proc.lines if line.startswith("{")],
    ):
        lines = [json.loads(line) for line in sink]  # every line of each sink is JSON
        task_lines = [line for line in lines if line["message"] == "ok task running with 8"]
        assert len(task_lines) == 1, sink
        assert task_lines[0]["task_id"] == ok.id and task_lines[0]["task_name"] == "t.ok"
    assert [r for r in records_with_scope(receiver) if r["resource"].get("service.name") == "worker-logsfile"] == []


# -- in process -------------------------------------------------------------------------------


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    level = root.level
    yield
    logs.uninstall()
    assert root.level == level


def test_in_process_file_sink_context_and_uninstall(tmp_path, tasks, restore_logging):
    from opentelemetry.sdk.trace import TracerProvider

    path = tmp_path / "sub" / "app.log"
    settings = load(
        {
            "otlp": False,
            "log_stdout": False,
            "log_file": str(path),
            "log_file_max_bytes": 4096,
            "log_file_backups": 2,
            "service_name": "inproc",
            "log_level": "INFO",
        }
    )
    root = logging.getLogger()
    before = list(root.handlers)
    assert logs.install(settings, build_resource(settings)) is None  # no OTLP: no LoggerProvider
    assert [h for h in root.handlers if h not in before] == logs.installed_handlers()
    assert len(logs.installed_handlers()) == 1
    log = logging.getLogger("inproc")

    result = tasks.ok.apply((3,))  # runs the task here, through Celery's tracer (task stack pushed and popped)
    log.info("after the task")
    with TracerProvider().get_tracer("t").start_as_current_span("s") as span:
        log.info("in a span")
    log.info("after the span")
    log.debug("below the level")

    lines = [json.loads(x) for x in path.read_text().splitlines()]
    by_message = {line["message"]: line for line in lines}
    task_line = by_message["ok task running with 3"]
    assert task_line["task_id"] == result.id and task_line["task_name"] == "t.ok"
    assert not set(CONTEXT) & set(by_message["after the task"])  # nothing stale
    in_span = by_message["in a span"]
    assert in_span["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert in_span["span_id"] == format(span.get_span_context().span_id, "016x")
    assert "task_id" not in in_span
    assert not set(CONTEXT) & set(by_message["after the span"])
    assert "below the level" not in by_message
    assert all(line["service"] == "inproc" for line in lines)

    for i in range(200):  # rotation at 4 KiB, two backups kept
        log.info("filler %d %s", i, "x" * 40)
    logs.uninstall()
    assert logs.installed_handlers() == []
    assert root.handlers == before
    rotated = sorted(p.name for p in path.parent.iterdir())
    assert rotated == ["app.log", "app.log.1", "app.log.2"]
    for file in path.parent.iterdir():
        assert file.stat().st_size <= 4096
        for raw in file.read_text().splitlines():
            json.loads(raw)
    log.warning("after uninstall")
    assert "after uninstall" not in path.read_text()


def test_in_process_otlp_excludes_exporter_logging(receiver, restore_logging):
    from opentelemetry.sdk.trace import TracerProvider

    settings = load({"log_stdout": False, "endpoint": receiver.endpoint, "service_name": "inproc-otlp"})
    provider = logs.install(settings, build_resource(settings))
    assert provider is not None
    try:
        with TracerProvider().get_tracer("t").start_as_current_span("s") as span:
            with logs.bind(user_id="u1", agent="clean"):
                logging.getLogger("inproc").warning("exported %s", "line", extra={"n": 1, "none": None})
            logging.getLogger("opentelemetry.exporter.otlp.proto.http").warning("exporter noise")
            logging.getLogger("urllib3.connectionpool").warning("pool noise")
        assert provider.force_flush(10_000)

        def mine():
            return [r for r in records_with_scope(receiver) if r["resource"].get("service.name") == "inproc-otlp"]

        (record,) = wait_for(mine, timeout=15)
        assert record["body"] == "exported line" and record["scope"] == "inproc"
        assert record["severity"] == "WARN" and record["severity_number"] == 13
        assert record["trace_id"] == format(span.get_span_context().trace_id, "032x")
        assert record["attributes"]["user_id"] == "u1" and record["attributes"]["agent"] == "clean"
        assert record["attributes"]["n"] == 1 and "none" not in record["attributes"]
        assert "task_id" not in record["attributes"]
    finally:
        logs.uninstall()
        provider.shutdown()


def test_logs_off_installs_nothing_in_process(restore_logging):
    settings = load({"logs": False})
    root = logging.getLogger()
    before = list(root.handlers)
    assert logs.install(settings, build_resource(settings)) is None
    assert root.handlers == before and logs.installed_handlers() == []
