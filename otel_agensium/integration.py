"""One protocol for every integration (celery, redis, web, logs, queue gauges): all or nothing, once.

An integration subclasses :class:`Integration` and implements :meth:`~Integration.setup`.
Every step of ``setup()`` that changes the process (a signal connected, a function
wrapped, a handler added) records how to take itself back with :meth:`~Integration.on_uninstall`
right after it is done. Then:

* ``install()`` either completes or, when a step raises, takes back every step already
  done, in reverse order, and re-raises: nothing is left half connected;
* ``uninstall()`` replays exactly what was recorded, newest first, and may be called
  twice;
* a second ``install()`` of an integration that is already installed is refused with
  :class:`IntegrationError`, for the same object and, for ``exclusive`` integrations
  (those that patch process-wide state: Celery signals, redis-py, FastAPI, the root
  logger), for another object of the same ``name`` too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar

from .errors import raising, report

_lock = threading.Lock()
_active: dict[str, Integration] = {}


class IntegrationError(RuntimeError):
    """An integration was installed twice."""


class Integration:
    name: ClassVar[str] = "integration"
    # Patches process-wide state: one installed per process.
    exclusive: ClassVar[bool] = True

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], Any]]] = []
        self._installed = False

    @property
    def installed(self) -> bool:
        return self._installed

    def setup(self) -> None:
        """Do the installing; record every change with :meth:`on_uninstall` right after making it."""
        raise NotImplementedError

    def on_uninstall(self, step: Callable[[], Any], what: str = "") -> None:
        """Record how to take back the change just made; ``uninstall()`` runs the steps newest first."""
        self._undo.append((what or getattr(step, "__qualname__", "step"), step))

    def install(self) -> None:
        with _lock:
            if self._installed:
                raise IntegrationError(f"otel-agensium: the {self.name} integration is already installed")
            owner = _active.get(self.name)
            if self.exclusive and owner is not None:
                raise IntegrationError(
                    f"otel-agensium: the {self.name} integration is already installed in this "
                    "process; call Handle.shutdown() before installing it again"
                )
            if self.exclusive:
                _active[self.name] = self
            self._installed = True
        try:
            self.setup()
        except BaseException:
            self.uninstall()  # every step done so far, taken back
            raise

    def uninstall(self) -> None:
        """Take back every recorded step, newest first; a step that fails is counted and the rest still run."""
        failed: BaseException | None = None
        while self._undo:
            what, step = self._undo.pop()
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the other steps must still run
                failed = failed or exc
                report(f"{self.name}.uninstall: {what}", reraise=False)
        with _lock:
            self._installed = False
            if _active.get(self.name) is self:
                del _active[self.name]
        if failed is not None and raising():
            raise failed


def installed() -> dict[str, Integration]:
    """The exclusive integrations installed in this process, by name."""
    with _lock:
        return dict(_active)


def connect(integration: Integration, signal: Any, handler: Callable[..., Any]) -> None:
    """Connect a Celery (or any ``.connect``/``.disconnect``) signal and record its disconnection."""
    signal.connect(handler, weak=False)
    integration.on_uninstall(lambda: signal.disconnect(handler), f"{getattr(signal, 'name', 'signal')}.disconnect")
