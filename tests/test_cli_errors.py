"""Every `otel-agensium` command answers bad input in one line, with the documented exit status.

The sweep runs each subcommand (as `otel-agensium --help` lists them) against bad input of
every known family: bad usage and impossible numbers, empty values, bad configuration, apps
that do not import (missing, no such attribute, not an app, a bug at import, a file that
cannot be read or decoded), unknown transports, real brokers that refuse, reject a password,
are frozen (a redis-server stopped with SIGSTOP) or accept and never answer, telemetry turned
off, and output that cannot be written. Each case is a real `otel-agensium` process, bounded
by its subprocess timeout; the cases run in parallel, so the whole sweep takes a few seconds
beyond the slowest case.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from tests.procs import CLI, ROOT, Proc, RedisServer, free_port

TIMES: dict[str, float] = {}  # seconds per case, printed with -s
PASSWORD = "s3cret-PW-7f"  # the real one; must never be printed
WRONG = "wrong-PW-19"  # a wrong one, given by the user; must never be printed either
BOUND = 20.0  # seconds any case may take; the network ones wait AGENSIUM_HEALTH_TIMEOUT=1 at most

OK, FAILED, USAGE, BUG = 0, 1, 2, 70
SIGPIPE_DEATH = -signal.SIGPIPE  # killed by SIGPIPE, as `cat` is when `head` stops reading


@dataclass
class Case:
    id: str
    args: list[str]
    status: int
    says: str  # a fragment the answer must contain (stderr + stdout); "" for a silent answer
    env: dict[str, str] = field(default_factory=dict)
    max_lines: int = 1  # non-empty lines of stdout + stderr
    stdout: str = "pipe"  # pipe | closed-pipe | full (/dev/full) | closed (>&-)
    cwd: str = ""


def _cases(u: dict[str, str]) -> list[Case]:
    """Every case; ``u`` holds the URLs of the real brokers and the path of the bad modules."""
    doctor_lines = 12  # doctor's report: one line per check and a summary
    cases = [
        # --- bad usage: argparse, one line, exit 2 ---
        Case("no-command", [], USAGE, "required: command"),
        Case("unknown-command", ["nosuch"], USAGE, "invalid choice: 'nosuch'"),
        Case("check-extra-arg", ["check", "--bogus"], USAGE, "unrecognized arguments: --bogus"),
        Case("settings-extra-arg", ["settings", "extra"], USAGE, "unrecognized arguments: extra"),
        Case("demo-negative-tasks", ["demo", "--tasks", "-5"], USAGE, "--tasks: expected an integer from 2 to 10000"),
        Case("demo-zero-tasks", ["demo", "--tasks", "0"], USAGE, "--tasks: expected an integer from 2"),
        Case("demo-huge-tasks", ["demo", "--tasks", "99999999"], USAGE, "got '99999999'"),
        Case("demo-word-tasks", ["demo", "--tasks", "many"], USAGE, "got 'many'"),
        Case("demo-empty-tasks", ["demo", "--tasks", ""], USAGE, "got ''"),
        Case("demo-empty-broker", ["demo", "--broker", ""], USAGE, "--broker: empty"),
        Case("demo-unknown-transport", ["demo", "--broker", "nonsense://x"], USAGE, "unknown transport 'nonsense'"),
        Case(
            "demo-bad-port",
            ["demo", "--broker", f"redis://:{WRONG}@127.0.0.1:notaport/0"],
            USAGE,
            "could not be cast to integer",
        ),
        Case("demo-not-a-url", ["demo", "--broker", "localhost"], USAGE, "is not a URL"),
        Case(
            "demo-redis-db-not-a-number",
            ["demo", "--broker", f"redis://:{WRONG}@127.0.0.1:6379/abc"],
            USAGE,
            "database 'abc' is not a number; expected a database number",
        ),
        Case(
            "doctor-redis-db-not-a-number",
            ["doctor", "--broker", "redis://127.0.0.1:6379/0;redis://127.0.0.1:6379/x1"],
            USAGE,
            "database 'x1' is not a number",
        ),
        Case(
            "monitor-empty-queues",
            ["monitor", "--queues", " , ", "--once"],
            USAGE,
            "--queues: expected comma-separated queue names",
        ),
        Case("monitor-empty-app", ["monitor", "-A", "", "--once"], USAGE, "-A/--app: expected a module"),
        Case("monitor-empty-broker", ["monitor", "--broker", "", "--once"], USAGE, "--broker: empty"),
        Case(
            "monitor-unknown-transport",
            ["monitor", "--broker", "http://x", "--once"],
            USAGE,
            "unknown transport 'http'",
        ),
        Case(
            "monitor-nothing-to-watch",
            ["monitor", "--once"],
            USAGE,
            "give -A/--app or --broker",
            env={"AGENSIUM_BROKER_URL": ""},
        ),
        Case(
            "doctor-negative-timeout", ["doctor", "--timeout", "-1"], USAGE, "--timeout: expected a number of seconds"
        ),
        Case("doctor-nan-timeout", ["doctor", "--timeout", "nan"], USAGE, "got 'nan'"),
        Case("doctor-huge-timeout", ["doctor", "--timeout", "1e9"], USAGE, "got '1e9'"),
        Case("doctor-empty-timeout", ["doctor", "--timeout", ""], USAGE, "got ''"),
        Case("doctor-empty-queues", ["doctor", "--queues", ","], USAGE, "--queues: expected comma-separated"),
        Case("doctor-unknown-transport", ["doctor", "--broker", "nonsense://x"], USAGE, "unknown transport"),
        Case("doctor-nothing-to-check", ["doctor"], USAGE, "give -A/--app or --broker"),
        # --- bad configuration: exit 2 (check reports it and exits 1, or 2 in strict mode, as documented) ---
        Case(
            "demo-strict-bad-setting",
            ["demo"],
            USAGE,
            "AGENSIUM_METRICS='maybe' is invalid",
            env={"AGENSIUM_STRICT": "true", "AGENSIUM_METRICS": "maybe"},
        ),
        Case(
            "monitor-strict-bad-setting",
            ["monitor", "--broker", u["refused"], "--once"],
            USAGE,
            "AGENSIUM_HEALTH_TIMEOUT='-1' is invalid",
            env={"AGENSIUM_STRICT": "true", "AGENSIUM_HEALTH_TIMEOUT": "-1"},
        ),
        Case(
            "demo-strict-log-file-is-a-directory",
            ["demo"],
            USAGE,
            "AGENSIUM_LOG_FILE='/tmp' is invalid",
            env={"AGENSIUM_STRICT": "true", "AGENSIUM_LOG_FILE": "/tmp"},
        ),
        Case(
            "check-strict-bad-setting",
            ["check"],
            USAGE,
            "AGENSIUM_LOGS='maybe' is invalid: expected true or false (also 1/0, yes/no, on/off); not starting",
            env={"AGENSIUM_STRICT": "true", "AGENSIUM_LOGS": "maybe"},
        ),
        Case(
            "check-bad-setting-empty-ones-unset",
            ["check"],
            FAILED,
            "AGENSIUM_MAX_TASK_NAMES='-3' is invalid",
            env={"AGENSIUM_MAX_TASK_NAMES": "-3", "OTEL_TRACES_SAMPLER": "", "AGENSIUM_BROKER_URL": ""},
        ),
        # --- the app of -A: exit 2, one line (doctor reports it as a failed check: exit 1) ---
        Case("monitor-app-missing", ["monitor", "-A", "nosuchmod", "--once"], USAGE, "No module named 'nosuchmod'"),
        Case(
            "monitor-app-no-attribute",
            ["monitor", "-A", "tests.apps.cli_apps:nope", "--once"],
            USAGE,
            "has no attribute 'nope'",
        ),
        Case(
            "monitor-app-not-an-app",
            ["monitor", "-A", "tests.apps.cli_apps:not_an_app", "--once"],
            USAGE,
            "is not a Celery app but a int",
        ),
        Case(
            "monitor-app-raises-on-import",
            ["monitor", "-A", "tests.apps.cli_broken_app"],
            USAGE,
            "RuntimeError: the app's own start-up failed",
        ),
        Case(
            "monitor-app-file-undecodable",
            ["monitor", "-A", "undecodable_app", "--once"],
            USAGE,
            "cannot load the Celery app 'undecodable_app': SyntaxError",
            cwd=u["apps_dir"],
        ),
        Case(
            "monitor-app-file-dangling",
            ["monitor", "-A", "dangling_app", "--once"],
            USAGE,
            "cannot load the Celery app 'dangling_app'",
            cwd=u["apps_dir"],
        ),
        Case(
            "monitor-app-file-unreadable",
            ["monitor", "-A", "unreadable_app", "--once"],
            USAGE,
            "OSError: [Errno 5] Input/output error Fix: Make",
            cwd=u["apps_dir"],
        ),
        Case(
            "monitor-app-unknown-transport",
            ["monitor", "-A", "tests.apps.cli_apps:bad_transport", "--once"],
            USAGE,
            "unknown broker transport 'nonsense'",
        ),
        Case(
            "doctor-app-missing",
            ["doctor", "-A", "nosuchmod", "--timeout", "1"],
            FAILED,
            "cannot import nosuchmod",
            max_lines=doctor_lines,
        ),
        # --- the broker refuses, rejects the password, is frozen or never answers: exit 1 ---
        Case("demo-refused", ["demo", "--broker", u["refused"]], FAILED, "connection refused"),
        Case("demo-wrong-password", ["demo", "--broker", u["wrong"]], FAILED, "authentication failed"),
        Case("demo-no-password", ["demo", "--broker", u["nopass"]], FAILED, "authentication failed"),
        Case("demo-frozen-redis", ["demo", "--broker", u["frozen"]], FAILED, "no answer within 1 s"),
        Case("demo-silent-redis", ["demo", "--broker", u["silent_redis"]], FAILED, "no answer within 1 s"),
        Case(
            "demo-unknown-host", ["demo", "--broker", "redis://no-such-host.invalid:6379/0"], FAILED, "host not found"
        ),
        Case("demo-silent-amqp", ["demo", "--broker", u["silent_amqp"]], FAILED, "no answer within 1 s"),
        Case(
            "monitor-once-wrong-password",
            ["monitor", "--broker", u["wrong"], "--once"],
            FAILED,
            '"error": "OperationalError: invalid username-password pair',
        ),
        Case(
            "monitor-once-app-wrong-password",
            ["monitor", "-A", "tests.apps.cli_apps", "--once"],
            FAILED,
            "invalid username-password pair",
            env={"TEST_BROKER_URL": u["wrong"]},
        ),
        Case(
            "monitor-once-frozen-redis",
            ["monitor", "--broker", u["frozen"], "--once"],
            FAILED,
            "Timeout reading from socket",
        ),
        Case("monitor-once-silent-amqp", ["monitor", "--broker", u["silent_amqp"], "--once"], FAILED, "timed out"),
        Case(
            "monitor-once-refused-env-broker",
            ["monitor", "--once"],
            FAILED,
            "Connection refused",
            env={"AGENSIUM_BROKER_URL": u["refused"]},
        ),
        Case(
            "doctor-wrong-password",
            ["doctor", "--broker", u["wrong"]],
            FAILED,
            "authentication failed",
            max_lines=doctor_lines,
        ),
        Case(
            "doctor-frozen-redis",
            ["doctor", "--broker", u["frozen"]],
            FAILED,
            "no answer within 1 s",
            max_lines=doctor_lines,
        ),
        Case(
            "doctor-silent-amqp",
            ["doctor", "--broker", u["silent_amqp"]],
            FAILED,
            "no answer within 1 s",
            max_lines=doctor_lines,
        ),
        Case("demo-otlp-refused", ["demo", "--otlp"], FAILED, "--otlp: http://127.0.0.1:"),
        Case(
            "demo-otlp-silent",
            ["demo", "--otlp"],
            FAILED,
            "no answer within 1 s",
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": u["silent_http"]},
        ),
        # --- telemetry turned off ---
        Case(
            "demo-sdk-disabled",
            ["demo"],
            OK,
            "nothing to show: OTEL_SDK_DISABLED=true",
            env={"OTEL_SDK_DISABLED": "true"},
        ),
        Case(
            "monitor-sdk-disabled",
            ["monitor", "--broker", u["good"]],
            USAGE,
            "metrics are off",
            env={"OTEL_SDK_DISABLED": "true"},
        ),
        # --- output that cannot be written ---
        Case("settings-closed-pipe", ["settings"], SIGPIPE_DEATH, "", stdout="closed-pipe", max_lines=0),
        Case("check-closed-pipe", ["check"], SIGPIPE_DEATH, "", stdout="closed-pipe", max_lines=0),
        Case("demo-closed-pipe", ["demo"], SIGPIPE_DEATH, "", stdout="closed-pipe", max_lines=0),
        Case(
            "monitor-once-closed-pipe",
            ["monitor", "--broker", u["good"], "--once"],
            SIGPIPE_DEATH,
            "",
            stdout="closed-pipe",
            max_lines=0,
        ),
        Case(
            "doctor-closed-pipe",
            ["doctor", "--broker", u["good"]],
            SIGPIPE_DEATH,
            "",
            stdout="closed-pipe",
            max_lines=0,
        ),
        Case(
            "settings-disk-full", ["settings"], FAILED, "cannot write to standard output: No space left", stdout="full"
        ),
        Case("doctor-disk-full", ["doctor", "--broker", u["good"]], FAILED, "No space left", stdout="full"),
        Case(
            "settings-stdout-closed",
            ["settings"],
            FAILED,
            "cannot write to standard output: it is closed",
            stdout="closed",
        ),
        Case(
            "monitor-once-stdout-closed",
            ["monitor", "--broker", u["good"], "--once"],
            FAILED,
            "it is closed",
            stdout="closed",
        ),
    ]
    network = {
        "AGENSIUM_HEALTH_TIMEOUT": "1",
        "AGENSIUM_INSPECT_TIMEOUT": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": u["otlp"],
    }
    for case in cases:
        case.env = {**network, **case.env}
        if case.args[:1] == ["doctor"] and "--broker" in case.args and "--timeout" not in case.args:
            case.args = [*case.args, "--timeout", "1"]
    return cases


def _run(case: Case) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGENSIUM_", "TEST_BROKER"))}
    env = {**clean, "PYTHONPATH": str(ROOT), **case.env}
    command = [CLI, *case.args]
    options = {"env": env, "cwd": case.cwd or ROOT, "stdin": subprocess.DEVNULL, "timeout": BOUND, "text": True}
    if case.stdout == "pipe":
        return subprocess.run(command, capture_output=True, **options)
    if case.stdout == "full":
        with open("/dev/full", "w") as full:
            result = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, **options)
        result.stdout = ""
        return result
    if case.stdout == "closed":  # the shell's `>&-`
        result = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *command], stderr=subprocess.PIPE, **options)
        result.stdout = ""
        return result
    read, write = os.pipe()  # closed-pipe: the reader is gone before we write, as after `| head -1`
    os.close(read)
    try:
        result = subprocess.run(command, stdout=write, stderr=subprocess.PIPE, **options)
    finally:
        os.close(write)
    result.stdout = ""
    return result


@pytest.fixture(scope="module")
def brokers(tmp_path_factory):
    """A password-protected redis-server, a frozen one (SIGSTOP), a socket that accepts and never answers."""
    apps = tmp_path_factory.mktemp("cli_apps")
    (apps / "undecodable_app.py").write_bytes(b"name = '\xff\xfe'\n")  # not UTF-8: Python cannot read it
    (apps / "dangling_app.py").symlink_to(apps / "gone" / "app.py")  # a module file that is not there
    (apps / "unreadable_app.py").symlink_to("/proc/self/mem")  # a file whose read fails (EIO), even for root
    good = RedisServer(password=PASSWORD).start()
    frozen = RedisServer().start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel completes each handshake; nothing ever answers
    os.kill(frozen.proc.proc.pid, signal.SIGSTOP)
    port = silent.getsockname()[1]
    try:
        yield {
            "good": good.url,
            "wrong": f"redis://:{WRONG}@127.0.0.1:{good.port}/0",
            "nopass": f"redis://127.0.0.1:{good.port}/0",
            "refused": f"redis://127.0.0.1:{free_port()}/0",
            "frozen": frozen.url,
            "silent_redis": f"redis://127.0.0.1:{port}/0",
            "silent_amqp": f"amqp://guest:{WRONG}@127.0.0.1:{port}//",
            "silent_http": f"http://127.0.0.1:{port}",
            "otlp": f"http://127.0.0.1:{free_port()}",
            "apps_dir": str(apps),
        }
    finally:
        silent.close()
        frozen.stop()  # SIGKILL ends a stopped process too
        good.stop()


@pytest.fixture(scope="module")
def sweep(brokers):
    """Every case run once, in parallel (most of them wait on a broker or on imports, not on the CPU)."""
    cases = _cases(brokers)
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = dict(zip([c.id for c in cases], pool.map(_outcome, cases), strict=True))
    print("slowest cases:", ", ".join(f"{k} {v:.1f} s" for k, v in sorted(TIMES.items(), key=lambda kv: -kv[1])[:8]))
    return {c.id: (c, outcomes[c.id]) for c in cases}


def _outcome(case: Case) -> subprocess.CompletedProcess | str:
    started = time.monotonic()
    try:
        return _run(case)
    except subprocess.TimeoutExpired:
        return f"no answer within {BOUND:g} s"
    finally:
        TIMES[case.id] = time.monotonic() - started


# The cases with their URLs left empty: their ids and commands, known before any broker starts.
LISTED = _cases(
    {
        k: ""
        for k in (
            "good",
            "wrong",
            "nopass",
            "refused",
            "frozen",
            "silent_redis",
            "silent_amqp",
            "silent_http",
            "otlp",
            "apps_dir",
        )
    }
)
CASE_IDS = [c.id for c in LISTED]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_is_answered_in_a_few_lines_with_the_documented_status(sweep, case_id):
    case, result = sweep[case_id]
    assert not isinstance(result, str), f"{case.args}: {result}"
    answer = (result.stdout or "") + (result.stderr or "")
    shown = f"otel-agensium {' '.join(case.args)}\n{answer[-3000:]}"
    assert result.returncode == case.status, shown
    assert "Traceback" not in answer, shown
    lines = [line for line in answer.splitlines() if line.strip()]
    assert len(lines) <= case.max_lines, shown
    assert case.says in answer, shown
    assert PASSWORD not in answer and WRONG not in answer, shown
    if case.status == USAGE and case.says:
        assert re.search(r"otel-agensium( \w+)?: ", result.stderr), shown  # named after the command


def test_sweep_covers_every_subcommand_and_every_exit_status():
    help_text = subprocess.run([CLI, "--help"], capture_output=True, text=True, timeout=BOUND).stdout
    commands = re.search(r"\{([a-z,]+)\}", help_text)[1].split(",")
    assert len(commands) == 5 and set(commands) <= {c.args[0] for c in LISTED if c.args}, commands
    assert {c.status for c in LISTED} == {OK, FAILED, USAGE, SIGPIPE_DEATH}


def test_a_bug_in_the_package_keeps_its_traceback_and_debug_shows_one_for_a_known_error():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bug = (
        "import sys; from otel_agensium import cli; cli.settings_module.SETTINGS = None; "
        "sys.exit(cli.main(['settings']))"
    )
    result = subprocess.run([sys.executable, "-c", bug], capture_output=True, text=True, timeout=BOUND, env=env)
    assert result.returncode == BUG, result.stderr
    assert "Traceback" in result.stderr and "TypeError" in result.stderr  # even though the boundary needs SETTINGS
    assert "During handling" not in result.stderr  # the original error only
    assert result.stderr.rstrip().endswith("this is a bug in otel-agensium; please report it with the traceback above")
    debug = subprocess.run(
        [CLI, "--debug", "monitor", "-A", "nosuchmod", "--once"], capture_output=True, text=True, timeout=BOUND, env=env
    )
    assert debug.returncode == USAGE, debug.stderr  # the same status as without --debug
    assert "Traceback" in debug.stderr and "ModuleNotFoundError" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("otel-agensium monitor: cannot load the Celery app")


def test_long_running_monitor_on_a_frozen_broker_starts_warns_and_stops_within_the_bound(brokers):
    import httpx

    port = free_port()
    monitor = Proc(
        [CLI, "monitor", "--broker", brokers["frozen"], "--queues", "cli-sweep"],
        name="monitor",
        env={
            "AGENSIUM_HEALTH_TIMEOUT": "1",
            "AGENSIUM_INSPECT_TIMEOUT": "1",
            "AGENSIUM_OTLP": "false",
            "AGENSIUM_PROMETHEUS_PORT": str(port),
        },
    )
    try:
        monitor.wait_for_line("otel-agensium monitor: watching", timeout=BOUND)
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=BOUND)  # a collection reads the broker
        assert scrape.status_code == 200 and "celery_queue_length{" not in scrape.text  # no stale or made-up depth
        monitor.wait_for_line("celery_queue_length not reported", timeout=BOUND)
    finally:
        status = monitor.stop(signal.SIGTERM, timeout=BOUND)
    assert status == 0, monitor.output[-3000:]
    assert "Traceback" not in monitor.output


def test_rabbitmq_refusing_the_password_is_one_line_without_it():
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    url = f"amqp://guest:{WRONG}@127.0.0.1:5672//"
    for args, says in (
        (["demo", "--broker", url], "authentication failed (AccessRefused"),
        (["doctor", "--broker", url, "--timeout", "2"], "authentication failed"),
    ):
        result = _run(Case("rabbit", args, FAILED, says, max_lines=12))
        answer = result.stdout + result.stderr
        assert result.returncode == FAILED and says in answer, answer
        assert WRONG not in answer and "Traceback" not in answer, answer


def test_interrupted_demo_says_so_and_exits_130():
    demo = Proc([CLI, "demo", "--tasks", str(10_000)], name="demo")
    try:
        demo.wait_for_line("otel-agensium demo: broker memory://", timeout=BOUND)
        os.kill(demo.proc.pid, signal.SIGINT)
        demo.proc.wait(BOUND)
    finally:
        status = demo.stop(timeout=BOUND)
    assert status == 130, demo.output[-3000:]
    assert demo.lines[-1] == "otel-agensium demo: interrupted" and "Traceback" not in demo.output


def test_readme_documents_every_exit_status():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Exit statuses", 1)[1].split("\n## ", 1)[0]
    for status in ("`0`", "`1`", "`2`", "`70`", "`130`", "`141`"):
        assert status in section, status
    statuses = re.findall(r"^\* (\d+):", (ROOT / "otel_agensium" / "cli_errors.py").read_text(), re.M)
    assert statuses == ["0", "1", "2", "70", "130"], statuses  # the module's docstring says the same
