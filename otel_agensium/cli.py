"""The ``otel-agensium`` command: ``check``, ``settings``, ``demo``, ``monitor``, ``doctor``."""

from __future__ import annotations

import argparse
import sys

from . import settings as settings_module


def _check(_: argparse.Namespace) -> int:
    problems = settings_module.check()
    for line in problems:
        print(line)
    if not problems:
        print(f"ok: {len(settings_module.SETTINGS)} settings valid")
    return 1 if problems else 0


def _settings(_: argparse.Namespace) -> int:
    for s in settings_module.SETTINGS:
        default = "<none>" if s.default in (None, {}, ()) else s.default
        if isinstance(default, tuple):
            default = ",".join(default)
        print(f"{s.env:36} default={default!s:24} {s.doc}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(broker=args.broker, tasks=args.tasks, otlp=args.otlp)


def _monitor(args: argparse.Namespace) -> int:
    from .monitor import run

    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    return run(app_path=args.app, broker=args.broker, queues=queues, once=args.once)


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import run

    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    return run(app_path=args.app, broker=args.broker, as_json=args.json, timeout=args.timeout, queues=queues)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 300:
        raise argparse.ArgumentTypeError("a number of seconds > 0 and <= 300")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otel-agensium", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="validate every setting; one line per bad one, exit 1 if any").set_defaults(
        func=_check
    )
    sub.add_parser("settings", help="list every setting with its variable and default").set_defaults(
        func=_settings
    )
    demo = sub.add_parser("demo", help="run tasks through an in-process worker and print the telemetry")
    demo.add_argument("--broker", default="memory://", help="broker URL (default: in-memory)")
    demo.add_argument("--tasks", type=int, default=20, help="tasks to run (default 20)")
    demo.add_argument("--otlp", action="store_true", help="also export over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT)")
    demo.set_defaults(func=_demo)
    monitor = sub.add_parser(
        "monitor", help="export celery_queue_length and celery_active_workers for a broker (one per deployment)"
    )
    monitor.add_argument("-A", "--app", help="Celery app, as for `celery -A` (module or module:attribute)")
    monitor.add_argument("--broker", help="broker URL (default: the app's, or AGENSIUM_BROKER_URL)")
    monitor.add_argument("--queues", help="comma-separated queues to measure (default: AGENSIUM_QUEUES)")
    monitor.add_argument("--once", action="store_true", help="read once, print JSON, exit (1 if the broker failed)")
    monitor.set_defaults(func=_monitor)
    doctor = sub.add_parser(
        "doctor", help="check broker, workers, queue consumers, OTLP endpoint and limits; one line each, exit 1 on FAIL"
    )
    doctor.add_argument("-A", "--app", help="Celery app, as for `celery -A` (module or module:attribute)")
    doctor.add_argument("--broker", help="broker URL (default: the app's, or AGENSIUM_BROKER_URL)")
    doctor.add_argument("--json", action="store_true", help="print the checks as a JSON list")
    doctor.add_argument("--timeout", type=_seconds, help="seconds per network check (default AGENSIUM_HEALTH_TIMEOUT)")
    doctor.add_argument("--queues", help="comma-separated queues that must have a consumer (default: the app's "
                        "routes, plus AGENSIUM_QUEUES when set)")
    doctor.set_defaults(func=_doctor)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
