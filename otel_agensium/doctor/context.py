"""What every check reads: the settings, the app, its broker, and a bounded wait."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._probe import Probe
from ..redact import url_password
from ..settings import Settings, load


@dataclass
class Context:
    """Built once per ``doctor`` run; checks fill in what later checks need (app, broker, workers)."""

    settings: Settings
    timeout: float
    inspect_timeout: float
    app_path: str | None = None
    broker_url: str | None = None
    explicit_queues: list[str] | None = None  # --queues, or AGENSIUM_QUEUES when set
    app: Any = None
    app_loaded: bool = False  # -A imported with its task modules
    celery: Any = None  # CeleryQueues of the app's broker, once the app check ran
    broker_ok: bool = False
    by_queue: dict[str, list[str]] | None = None  # live workers per queue, once the workers check ran

    @classmethod
    def create(
        cls,
        app_path: str | None,
        broker: str | None,
        timeout: float | None = None,
        queues: list[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Context:
        environ = dict(os.environ if environ is None else environ)
        settings = load(environ=environ, strict_raises=False)
        wait = float(timeout if timeout is not None else settings.health_timeout)
        explicit = queues if queues is not None else (list(settings.queues) or None)
        return cls(
            settings,
            wait,
            min(float(settings.inspect_timeout), wait),
            app_path,
            broker or settings.broker_url,
            explicit,
        )

    @property
    def app_ref(self) -> str:
        return self.app_path or "<app>"

    def wait(self, func: Callable[[], Any], name: str, timeout: float | None = None) -> Any:
        """Run ``func`` in a probe thread; its value, its error, or TimeoutError after ``timeout`` s."""
        return Probe(func, ttl=0, name=f"doctor-{name}").get(self.timeout if timeout is None else timeout).value

    def secrets(self) -> list[str]:
        """Strings no line may show: the broker's password, OTLP header values."""
        secrets = list(self.celery.secrets) if self.celery is not None else []
        password = url_password(self.broker_url)
        if password:
            secrets.append(password)
        return secrets + [v for v in self.settings.headers.values() if v]

    def tasks(self) -> dict[str, Any]:
        """The app's own tasks (Celery's built-ins left out)."""
        return {name: task for name, task in self.app.tasks.items() if not name.startswith("celery.")}
