"""The ``otel-agensium`` command: ``check``, ``settings``, ``demo``, ``monitor``, ``doctor``.

Every command runs inside one error boundary (:func:`main`): bad input of a known family is
answered in one line on stderr with the documented exit status (see
:mod:`otel_agensium.cli_errors`); anything else is a bug and keeps its traceback, as every
error does with ``--debug``.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any, NoReturn
from urllib.parse import urlsplit

from . import settings as settings_module
from ._parsers import REDIS_DB_ACCEPTED, redis_db_problem
from .cli_errors import BUG, INTERRUPTED, USAGE, die_of_sigpipe, known, output_failure

PROG = "otel-agensium"
MAX_DEMO_TASKS = 10_000


def _check(_: argparse.Namespace) -> int:
    problems, refused = settings_module.check()
    for line in problems:  # strict mode: start-up would refuse them, a configuration error (exit 2)
        print(f"{PROG} check: {line}" if refused else line, file=sys.stderr if refused else sys.stdout)
    if not problems:
        print(f"ok: {len(settings_module.SETTINGS)} settings valid")
    return USAGE if refused else 1 if problems else 0


def _settings(_: argparse.Namespace) -> int:
    for s in settings_module.SETTINGS:
        default = "<none>" if s.default in (None, {}, ()) else s.default
        if isinstance(default, bool):
            default = "true" if default else "false"  # as the variable is written (and the README has it)
        elif isinstance(default, tuple):
            default = ",".join(default)
        print(f"{s.env:36} default={default!s:24} {s.doc}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(broker=args.broker, tasks=args.tasks, otlp=args.otlp)


def _monitor(args: argparse.Namespace) -> int:
    from .cli_errors import load_app
    from .monitor import run

    broker = args.broker or settings_module.load().broker_url
    app = load_app(args.app, broker, _secrets(args)) if args.app or broker else None
    return run(app_path=args.app, broker=broker, queues=args.queues, once=args.once, app=app)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import run

    return run(app_path=args.app, broker=args.broker, as_json=args.json, timeout=args.timeout, queues=args.queues)


# --- argument types: an impossible value is refused by argparse, in one line, exit 2 ----------


def _int_range(low: int, high: int, why: str = "") -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}{why}, got {text!r}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 300:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0 and <= 300, got {text!r}")
    return value


def _broker_url(text: str) -> str:
    """A broker URL kombu can use (each of a ``;``-separated failover list): known transport, valid port."""
    from kombu import Connection

    from .celery.queues import scrub

    if not text.strip():
        raise argparse.ArgumentTypeError("empty; expected a broker URL such as redis://127.0.0.1:6379/0")
    for url in (part.strip() for part in text.split(";")):
        shown = scrub(url)  # argparse would echo the raw value, password included: every path answers here
        if "://" not in url:
            raise argparse.ArgumentTypeError(f"{shown!r} is not a URL; expected e.g. redis://127.0.0.1:6379/0")
        try:
            urlsplit(url).port  # noqa: B018 - raises ValueError on a bad port
            Connection(url).get_transport_cls()
        except KeyError:
            raise argparse.ArgumentTypeError(
                f"unknown transport {url.split('://')[0]!r} in {shown}; expected e.g. memory://, "
                "redis://host:6379/0, rediss://..., amqp://user:pass@host:5672//"
            ) from None
        except Exception as exc:  # noqa: BLE001 - a bad port, a transport whose library is missing...
            raise argparse.ArgumentTypeError(f"{shown}: {scrub(str(exc))}") from None
        problem = redis_db_problem(url)
        if problem:
            raise argparse.ArgumentTypeError(f"{shown}: {problem}; expected {REDIS_DB_ACCEPTED}")
    return text.strip()


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated queue names (e.g. celery,profile), got {text!r}")
    return names


def _app_ref(text: str) -> str:
    if not text.strip() or any(c.isspace() for c in text.strip()):
        raise argparse.ArgumentTypeError(f"expected a module or module:attribute, as for celery -A, got {text!r}")
    return text.strip()


class _Parser(argparse.ArgumentParser):
    """argparse that answers a usage error in one line (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    debug = _Parser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="also print the traceback of any error (same line and exit status)",
    )
    parser = _Parser(
        prog=PROG,
        description="Check settings, run the demo, export queue gauges, diagnose a deployment.",
        parents=[debug],
        epilog="Exit status: 0 done, 1 a check failed or the broker did not answer, "
        "2 bad usage or configuration, 70 a bug (traceback shown), 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser(
        "check", parents=[debug], help="validate every setting; one line per bad one, exit 1 if any"
    ).set_defaults(func=_check)
    sub.add_parser("settings", parents=[debug], help="list every setting with its variable and default").set_defaults(
        func=_settings
    )
    demo = sub.add_parser(
        "demo", parents=[debug], help="run tasks through an in-process worker and print the telemetry"
    )
    demo.add_argument("--broker", type=_broker_url, default="memory://", help="broker URL (default: in-memory)")
    demo.add_argument(
        "--tasks",
        type=_int_range(2, MAX_DEMO_TASKS, " (one fails and one retries, always)"),
        default=20,
        help="tasks to run (default 20)",
    )
    demo.add_argument("--otlp", action="store_true", help="also export over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT)")
    demo.set_defaults(func=_demo)
    monitor = sub.add_parser(
        "monitor",
        parents=[debug],
        help="export celery_queue_length and celery_active_workers for a broker (one per deployment)",
    )
    doctor = sub.add_parser(
        "doctor",
        parents=[debug],
        help="check broker, workers, queue consumers, OTLP endpoint and limits; one line each, exit 1 on FAIL",
    )
    for command in (monitor, doctor):
        command.add_argument(
            "-A", "--app", type=_app_ref, help="Celery app, as for `celery -A` (module or module:attribute)"
        )
        command.add_argument(
            "--broker", type=_broker_url, help="broker URL (default: the app's, or AGENSIUM_BROKER_URL)"
        )
    monitor.add_argument("--queues", type=_names, help="comma-separated queues to measure (default: AGENSIUM_QUEUES)")
    monitor.add_argument("--once", action="store_true", help="read once, print JSON, exit (1 if the broker failed)")
    monitor.set_defaults(func=_monitor)
    doctor.add_argument("--json", action="store_true", help="print the checks as a JSON list")
    doctor.add_argument("--timeout", type=_seconds, help="seconds per network check (default AGENSIUM_HEALTH_TIMEOUT)")
    doctor.add_argument(
        "--queues",
        type=_names,
        help="comma-separated queues that must have a consumer (default: "
        "the app's routes, plus AGENSIUM_QUEUES when set)",
    )
    doctor.set_defaults(func=_doctor)
    return parser


# --- the error boundary -------------------------------------------------------------------


def _secrets(args: argparse.Namespace) -> list[str]:
    """Strings no error line may print: broker and Redis passwords, OTLP header values."""
    loaded = settings_module.load(strict_raises=False)
    secrets = [v for v in loaded.headers.values() if v]
    for url in (getattr(args, "broker", None), loaded.broker_url, loaded.redis_url):
        for part in (url or "").split(";"):
            try:
                password = urlsplit(part).password
            except ValueError:
                password = None
            if password:
                secrets.append(password)
    return secrets


def _flush() -> None:
    if sys.stdout is None:  # started with stdout closed (>&-)
        raise output_failure()
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except BrokenPipeError:  # --help into a closed pipe
        die_of_sigpipe()
    command = f"{PROG} {args.command}"
    try:
        _flush()
        status = args.func(args)
        _flush()
        return status
    except BrokenPipeError:
        die_of_sigpipe()
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the boundary: known families in one line, the rest as bugs
        debug = getattr(args, "debug", False)
        if debug:
            traceback.print_exception(exc)  # then the same line and status as without --debug
        try:
            loaded = settings_module.load(strict_raises=False)
            error = known(
                exc, getattr(args, "broker", None) or loaded.broker_url, loaded.health_timeout, _secrets(args)
            )
        except Exception:  # noqa: BLE001 - the boundary never fails itself: the original error is shown
            error = None
        if error is None:
            if not debug:
                traceback.print_exception(exc)
            print(
                f"{command}: this is a bug in otel-agensium; please report it with the traceback above", file=sys.stderr
            )
            return BUG
        print(error.line(command), file=sys.stderr)
        return error.status


if __name__ == "__main__":
    sys.exit(main())
