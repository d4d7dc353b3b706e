"""Parsers of setting values: each takes the raw value and returns it parsed, or raises ValueError.

The raw value is a string from the environment or a Python value given to ``configure()``;
the ValueError's text is what the setting accepts (it ends up in the one-line message).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PROTOCOLS = ("http/protobuf", "grpc")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError("true or false (also 1/0, yes/no, on/off)")


def _int_range(low: int, high: int | None = None) -> Callable[[Any], int]:
    accepted = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(accepted)
        try:
            number = int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise ValueError(accepted) from None
        if number < low or (high is not None and number > high):
            raise ValueError(accepted)
        return number

    return parse


def _float_range(low: float, high: float, *, above_low: bool = False, accepted: str = "") -> Callable[[Any], float]:
    """A number from ``low`` to ``high`` (``above_low``: strictly greater than ``low``)."""
    if not accepted:
        accepted = f"a number > {low:g} and <= {high:g}" if above_low else f"a number from {low:g} to {high:g}"

    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(accepted)
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ValueError(accepted) from None
        if number != number or not low <= number <= high or (above_low and number == low):
            raise ValueError(accepted)
        return number

    return parse


_positive_seconds = _float_range(0, 300, above_low=True, accepted="a number of seconds > 0 and <= 300")


def _choice(*choices: str, lower: bool = True) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip()
        text = text.lower() if lower else text.upper()
        if text not in choices:
            raise ValueError("one of " + ", ".join(choices))
        return text

    return parse


REDIS_DB_ACCEPTED = "a database number after the host (redis://host:6379/0), or none"


def redis_db_problem(url: str) -> str | None:
    """What is wrong with the database of a ``redis://`` or ``rediss://`` URL (its path), or None.

    redis-py and kombu read the path as the database number and raise at the first connection
    otherwise ("Database is int between 0 and limit - 1, not abc"), long after the setting was read.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return None
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"database {db!r} is not a number"
    return None


def _url(*schemes: str) -> Callable[[Any], str]:
    accepted = "a URL starting with " + " or ".join(f"{s}://" for s in schemes)

    def parse(value: Any) -> str:
        text = str(value).strip()
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError(accepted) from None
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(accepted)
        if redis_db_problem(text):
            raise ValueError(f"{accepted}, with {REDIS_DB_ACCEPTED}")
        return text.rstrip("/")

    return parse


def _optional_url(*schemes: str) -> Callable[[Any], str | None]:
    parse_url = _url(*schemes)

    def parse(value: Any) -> str | None:
        if value is None or str(value).strip() == "":
            return None
        return parse_url(value)

    return parse


def _protocol(value: Any) -> str:
    protocol = _choice(*PROTOCOLS)(value)
    if protocol == "grpc":
        import importlib.util

        if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is None:
            raise ValueError("http/protobuf, or grpc once opentelemetry-exporter-otlp-proto-grpc is installed")
    return protocol


def _text(value: Any) -> str:
    text = str(value).strip()
    if not text or "\n" in text:
        raise ValueError("a non-empty single-line string")
    return text


def _headers(value: Any) -> dict[str, str]:
    accepted = "comma-separated key=value pairs"
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    headers: dict[str, str] = {}
    for pair in str(value).split(","):
        if not pair.strip():
            continue
        key, sep, val = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(accepted)
        headers[key.strip()] = val.strip()
    return headers


def _names(value: Any) -> tuple[str, ...]:
    accepted = "a comma-separated list of queue names"
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = tuple(str(item).strip() for item in items if str(item).strip())
    if not names or any(not n.isprintable() or len(n) > 200 for n in names):
        raise ValueError(accepted)
    return names


def _log_path(value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    path = Path(str(value).strip())
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError("a writable file path (this is a directory)")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise ValueError("a file path in a writable directory")
    return str(path)
