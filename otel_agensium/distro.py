"""Entry points for ``opentelemetry-instrument``: distro and configurator named ``agensium``.

``opentelemetry-instrument celery -A myapp worker`` loads the distro, then the
configurator (which calls :func:`otel_agensium.configure`), then every installed
instrumentor. The Celery, Redis and FastAPI instrumentors are already set up by
``configure()`` with our options, so the distro skips them; the rest load as usual.
When ``configure()`` left telemetry off (``OTEL_SDK_DISABLED=true``, or a set-up that
failed) they are skipped too: with no provider they would record nothing, and their
wrappers would still run around every task, Redis call and request.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]
from opentelemetry.sdk._configuration import _BaseConfigurator

from .bootstrap import configure, current
from .settings import ConfigurationError

HANDLED_BY_CONFIGURE = frozenset({"celery", "redis", "fastapi"})
_log = logging.getLogger("otel_agensium")


class AgensiumDistro(BaseDistro):
    def _configure(self, **kwargs: Any) -> None:
        return None

    def load_instrumentor(self, entry_point: Any, **kwargs: Any) -> None:
        if current() is not None and entry_point.name in HANDLED_BY_CONFIGURE:
            return  # set up by configure(), or telemetry is off
        super().load_instrumentor(entry_point, **kwargs)


class AgensiumConfigurator(_BaseConfigurator):
    def _configure(self, **kwargs: Any) -> None:
        try:
            configure()
        except ConfigurationError as exc:  # strict mode: refuse to start, in one line
            print(f"otel-agensium: {exc}", file=sys.stderr, flush=True)
            # We run inside sitecustomize, where SystemExit turns into a traceback: leave at once.
            os._exit(2)
        except Exception:  # noqa: BLE001 - never take the host down
            _log.warning("otel-agensium: set-up failed; the application runs without telemetry", exc_info=True)
