"""The settings table is one typed, frozen object; configure()'s signature is the table's."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

import otel_agensium
from otel_agensium import settings


def test_configure_takes_every_setting_keyword_only_with_its_type_and_default():
    params = inspect.signature(otel_agensium.configure).parameters
    assert list(params) == [s.name for s in settings.SETTINGS]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert params["health_timeout"].annotation == "float" and params["health_timeout"].default == 2.0
    assert params["redis_url"].annotation == "str | None" and params["redis_url"].default is None


def test_settings_are_frozen_and_typed():
    loaded = settings.load(environ={"AGENSIUM_HEALTH_TIMEOUT": "3", "OTEL_EXPORTER_OTLP_HEADERS": "a=b"})
    assert loaded.health_timeout == 3.0 and loaded.headers == {"a": "b"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.health_timeout = 1.0  # type: ignore[misc]
    assert {f.name: f.type for f in dataclasses.fields(settings.Settings)}["queues"] == "tuple[str, ...]"


def test_a_bad_argument_names_the_argument_and_never_says_a_default_is_used():
    with pytest.raises(otel_agensium.ConfigurationError) as info:
        otel_agensium.configure(sampler_arg=5)
    message = str(info.value)
    assert message == (
        "configure(sampler_arg=5) is invalid: expected a number from 0 to 1 "
        "(environment variable OTEL_TRACES_SAMPLER_ARG)"
    )
    assert "default" not in message


def test_the_package_ships_py_typed():
    assert (Path(otel_agensium.__file__).parent / "py.typed").is_file()


def test_the_public_api_is_importable_from_the_package():
    import subprocess
    import sys

    for name in otel_agensium.__all__:
        assert getattr(otel_agensium, name) is not None, name
    from otel_agensium import bind, health_router, install_queue_gauges  # noqa: F401

    # The lazy names cost nothing until used: the package alone does not import FastAPI or Celery's gauges.
    code = (
        "import sys, otel_agensium; "
        "print(sorted(m for m in ('fastapi', 'otel_agensium.health', 'otel_agensium.celery.gauges') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
