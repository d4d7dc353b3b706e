"""JSON log lines and OTLP log records (filled in by the logs issue)."""

from __future__ import annotations

from typing import Any


def install(settings: Any, resource: Any) -> Any:
    return None


def uninstall() -> None:
    return None
