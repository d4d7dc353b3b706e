"""What the ``otel-agensium`` commands answer when something is wrong: one line and an exit status.

A command raises :class:`CommandError` for what it knows is the user's to fix; the error
boundary in :mod:`otel_agensium.cli` also turns the known failure families raised from
deeper down (see :func:`known`) into one. Anything else is a bug in otel-agensium and keeps
its traceback. Exit statuses (README, "Exit statuses"):

* 0: done (``doctor`` may have printed warnings).
* 1: it ran, and a check failed or something it depends on did not answer or refused
  (broker unreachable, frozen, wrong password); or the output could not be written.
* 2: bad usage or configuration, found before anything was contacted: an argument or a
  setting out of range or empty, an unknown broker transport, an app that does not import.
* 70: a bug in otel-agensium (``EX_SOFTWARE``); the traceback is printed.
* 130: interrupted (Ctrl-C). Killed by SIGPIPE (the shell's 141) when the reader of the
  output went away, as ``cat`` is in ``cat big | head -1``.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import signal
import socket
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

OK, FAILED, USAGE, BUG, INTERRUPTED = 0, 1, 2, 70, 130


class CommandError(Exception):
    """A failure the user can fix: ``what`` went wrong and the ``fix``, printed as one line."""

    def __init__(self, what: str, fix: str = "", status: int = USAGE) -> None:
        super().__init__(what)
        self.what, self.fix, self.status = what, fix, status

    def line(self, command: str) -> str:
        text = " ".join(f"{command}: {self.what}".split())
        return text + (" Fix: " + " ".join(self.fix.split()) if self.fix else "")


def _describe(exc: BaseException, secrets: Iterable[str | None]) -> str:
    from .redact import describe

    return describe(exc, secrets)


def broker_failure(
    exc: BaseException, broker: str, timeout: float, is_redis: bool, secrets: Iterable[str | None] = ()
) -> CommandError:
    """The one line for an error talking to ``broker`` (a redacted URL), worded as ``doctor`` words it."""
    from .doctor import failures

    failure = failures.kind(exc)
    what, fix = failures.what(failure, timeout), failures.broker_fix(failure, broker, is_redis)
    return CommandError(f"broker {broker}: {what} ({_describe(exc, secrets)})", fix, FAILED)


# --- the families of errors raised from below a command ------------------------------------


def _network_types() -> tuple[type[BaseException], ...]:
    import kombu.exceptions
    import redis.exceptions

    types: list[type[BaseException]] = [
        kombu.exceptions.OperationalError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        ConnectionError,
        socket.gaierror,
        TimeoutError,
        concurrent.futures.TimeoutError,
    ]
    try:
        import amqp.exceptions

        types += [amqp.exceptions.ConnectionError, amqp.exceptions.AccessRefused]
    except ImportError:  # pragma: no cover - amqp comes with kombu
        pass
    return tuple(types)


def known(
    exc: BaseException, broker: str | None, timeout: float, secrets: Iterable[str | None] = ()
) -> CommandError | None:
    """The :class:`CommandError` for an exception of a known family; ``None`` for anything else (a bug)."""
    from .redact import redact_url
    from .settings import ConfigurationError

    secrets = list(secrets)
    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, ConfigurationError):
        return CommandError(str(exc), "Correct that variable (otel-agensium check lists every bad one).", USAGE)
    if isinstance(exc, KeyError) and "No such transport" in str(exc):  # kombu, for the app's own broker_url
        name = str(exc.args[0]).rpartition(":")[2].strip()
        return CommandError(
            f"unknown broker transport {name!r} in the app's broker URL",
            f"Use a transport kombu knows: {_SCHEMES}.",
            USAGE,
        )
    if isinstance(exc, _network_types()):
        shown = redact_url(broker) if broker else "<the app's broker>"
        return broker_failure(
            exc, shown, timeout, not broker or broker.startswith(("redis", "rediss", "sentinel")), secrets
        )
    if isinstance(exc, OSError) and exc.filename:
        return CommandError(
            f"cannot use {exc.filename}: {exc.strerror or exc}",
            "Give a path this user can read (or write, for a log file).",
            USAGE,
        )
    if isinstance(exc, OSError) and exc.errno in (errno.EBADF, errno.ENOSPC, errno.EIO, errno.EFBIG):
        return output_failure(exc)
    return None


_SCHEMES = "memory://, redis://, rediss://, sentinel://, amqp://, amqps://, sqs://, filesystem://"


def output_failure(exc: BaseException | None = None) -> CommandError:
    reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else "it is closed"
    silence_stdout()
    return CommandError(
        f"cannot write to standard output: {reason}",
        "Send the output somewhere writable (a file with free space, a pipe, /dev/null).",
        FAILED,
    )


# --- standard output ----------------------------------------------------------------------


def silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's last flush at exit cannot fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:  # pragma: no cover - nothing more to do
        pass


def die_of_sigpipe() -> NoReturn:
    """The reader of our output went away: end as Unix tools do, killed by SIGPIPE, silently."""
    silence_stdout()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    sys.exit(128 + signal.SIGPIPE)  # pragma: no cover - if SIGPIPE did not end the process


# --- the Celery app of -A and its broker -----------------------------------------------------


def load_app(app_path: str | None, broker: str | None, secrets: Iterable[str | None] = ()) -> Any:
    """The app of ``-A`` (or a bare one for ``broker``); an app that does not import is one line, exit 2."""
    from celery import Celery

    from .monitor import load_app as find

    if not app_path:
        return find(None, broker)
    module = app_path.split(":")[0]
    try:
        app = find(app_path, broker)
    except Exception as exc:  # noqa: BLE001 - the user's module: whatever its import raised is theirs to fix
        cause = exc.__context__ if isinstance(exc, ImportError) and isinstance(exc.__context__, AttributeError) else exc
        if isinstance(cause, ModuleNotFoundError) and cause.name and module.startswith(cause.name):
            fix = (
                f"Check the name, and run from the directory that holds {module.split('.')[0]} "
                "(or add that directory to PYTHONPATH), as for celery -A."
            )
        elif isinstance(cause, OSError):  # the module's file exists but cannot be read
            fix = f"Make {cause.filename or 'the module file of ' + module} readable by this user, or fix the disk."
        elif isinstance(cause, AttributeError):
            fix = "Name the Celery() instance as module:attribute (e.g. myapp.celery:app), as for celery -A."
        else:
            fix = f"Fix the error in the app's module; python -c 'import {module}' shows its traceback."
        raise CommandError(f"cannot load the Celery app {app_path!r}: {_describe(cause, secrets)}", fix, USAGE) from exc
    if not isinstance(app, Celery):
        raise CommandError(
            f"{app_path!r} is not a Celery app but a {type(app).__name__}",
            "Name the Celery() instance as module:attribute (e.g. myapp.celery:app).",
            USAGE,
        )
    return app


def check_broker(app: Any, timeout: float, secrets: Iterable[str | None] = ()) -> None:
    """Read one queue's depth within ``timeout`` s; a broker that refuses, rejects or hangs is one line, exit 1."""
    from .celery.queues import CeleryQueues, Probe

    queues = CeleryQueues(app, (), timeout=timeout, inspect_timeout=timeout)
    try:
        Probe(lambda: queues.lengths([app.conf.task_default_queue or "celery"]), ttl=0, name="cli-broker").get(
            timeout + 1
        )  # the client's own timeouts end it first
    except Exception as exc:  # noqa: BLE001 - told apart and worded as doctor words them
        raise broker_failure(exc, queues.broker, timeout, queues.is_redis, [*secrets, *queues.secrets]) from exc
