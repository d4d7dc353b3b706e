"""fastencode checks itself: the first batch (and a probe batch) against the official encoder, a fall-back
to the official encoder on a difference or an error (logged once), the setting that turns it off, and the
exporter versions it was proven against. Exports go to a real local OTLP receiver."""

from __future__ import annotations

import logging
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from otel_agensium import fastencode
from otel_agensium.fastencode import FastOTLPSpanExporter, official_encode, probe_spans
from tests.otlp_receiver import Receiver, wait_for
from tests.test_fastencode import _celery_like_spans

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def unchecked(monkeypatch):
    """Every test starts with a fast encoder that has not proven itself yet in this process."""
    monkeypatch.setattr(FastOTLPSpanExporter, "fast", None)


@pytest.fixture()
def receiver():
    with Receiver() as rec:
        yield rec


class Counting:
    """Wraps an encoder function and counts its calls (the real function does the work)."""

    def __init__(self, func, corrupt=False, fail_after=None):
        self.func, self.corrupt, self.fail_after, self.calls = func, corrupt, fail_after, 0

    def __call__(self, spans):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise ValueError("encoder bug")
        data = self.func(spans)
        return data + b"\x00" if self.corrupt else data


def _warnings(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "otel_agensium" and "fast OTLP span encoder" in r.getMessage()
    ]


def _export(receiver, batches):
    exporter = FastOTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces", timeout=5)
    try:
        results = [exporter.export(batch) for batch in batches]
    finally:
        exporter.shutdown()
    wait_for(lambda: len(receiver.raw) == len(batches))
    return results


def test_probe_batch_is_encoded_identically():
    probe = probe_spans()
    assert len(probe) == 2 and {s.name for s in probe} == {"probe/run", "INCRBY"}
    assert fastencode.encode_spans(probe) == official_encode(probe)


def test_first_batch_is_checked_then_the_fast_encoder_alone_runs(receiver, monkeypatch, caplog):
    fast = Counting(fastencode.encode_spans)
    official = Counting(official_encode)
    monkeypatch.setattr(fastencode.exporter, "encode_spans", fast)
    monkeypatch.setattr(fastencode.exporter, "official_encode", official)
    batches = [_celery_like_spans(3) for _ in range(4)]
    assert _export(receiver, batches) == [SpanExportResult.SUCCESS] * 4
    assert FastOTLPSpanExporter.fast is True
    # first batch: both encoders on its first spans and on the probe batch, then the fast one
    # on the whole batch; later batches: the fast one only
    assert (fast.calls, official.calls) == (3 + 3, 2)
    assert receiver.raw == [official_encode(b) for b in batches]
    assert not _warnings(caplog)


def test_bytes_that_differ_fall_back_to_the_official_encoder_logged_once(receiver, monkeypatch, caplog):
    fast = Counting(fastencode.encode_spans, corrupt=True)
    monkeypatch.setattr(fastencode.exporter, "encode_spans", fast)
    batches = [_celery_like_spans(2) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="otel_agensium"):
        assert _export(receiver, batches) == [SpanExportResult.SUCCESS] * 3
    assert FastOTLPSpanExporter.fast is False
    assert receiver.raw == [official_encode(b) for b in batches]  # what went out is the official message
    assert fast.calls == 1  # never again after the check
    assert _warnings(caplog) == [
        "otel-agensium: fast OTLP span encoder wrote bytes that differ from the official "
        "encoder's; using the official encoder from now on"
    ]


def test_an_encoding_error_resends_that_batch_officially_and_turns_the_fast_path_off(receiver, monkeypatch, caplog):
    fast = Counting(fastencode.encode_spans, fail_after=4)  # proves itself (2 calls), two batches, then raises
    monkeypatch.setattr(fastencode.exporter, "encode_spans", fast)
    batches = [_celery_like_spans(2) for _ in range(4)]
    with caplog.at_level(logging.WARNING, logger="otel_agensium"):
        assert _export(receiver, batches) == [SpanExportResult.SUCCESS] * 4
    assert FastOTLPSpanExporter.fast is False
    assert receiver.raw == [official_encode(b) for b in batches]  # the failed batch was not lost
    assert fast.calls == 5
    assert _warnings(caplog) == [
        "otel-agensium: fast OTLP span encoder failed (ValueError: encoder bug); using the official encoder from now on"
    ]


def test_an_error_on_the_first_batch_falls_back_too(receiver, monkeypatch, caplog):
    monkeypatch.setattr(fastencode.exporter, "encode_spans", Counting(fastencode.encode_spans, fail_after=0))
    batch = _celery_like_spans(2)
    with caplog.at_level(logging.WARNING, logger="otel_agensium"):
        assert _export(receiver, [batch]) == [SpanExportResult.SUCCESS]
    assert FastOTLPSpanExporter.fast is False
    assert receiver.raw == [official_encode(batch)]
    assert len(_warnings(caplog)) == 1 and "failed on its first batch" in _warnings(caplog)[0]


def test_setting_off_uses_the_official_exporter(receiver):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from otel_agensium.exporters import span_exporter
    from otel_agensium.settings import load

    exporter = span_exporter(load({"endpoint": receiver.endpoint, "fast_encoder": False}, environ={}))
    assert type(exporter._get()) is OTLPSpanExporter
    batch = _celery_like_spans(2)
    assert exporter.export(batch) is SpanExportResult.SUCCESS
    wait_for(lambda: receiver.raw)
    assert receiver.raw == [official_encode(batch)]
    exporter.shutdown()
    env = load(environ={"AGENSIUM_FAST_ENCODER": "false"})
    assert env.fast_encoder is False and not env.problems


def test_exporter_packages_pinned_to_the_minor_versions_proven_here():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for package in (
        "opentelemetry-exporter-otlp-proto-http",
        "opentelemetry-exporter-otlp-proto-common",
        "opentelemetry-proto",
    ):
        match = re.search(rf'"{package}>=(\d+)\.(\d+)(?:\.\d+)?,<(\d+)\.(\d+)"', pyproject)
        assert match, f"{package} is not pinned to one minor version"
        low, high = (int(match[1]), int(match[2])), (int(match[3]), int(match[4]))
        assert high == (low[0], low[1] + 1), package
        installed = tuple(int(x) for x in version(package).split(".")[:2])
        assert installed == low, (package, installed)


def test_only_the_first_spans_of_a_large_first_batch_are_encoded_twice(receiver, monkeypatch):
    sizes = []

    def official(spans):
        sizes.append(len(spans))
        return official_encode(spans)

    monkeypatch.setattr(fastencode.exporter, "official_encode", official)
    batch = _celery_like_spans(fastencode.CHECK_SPANS)  # two spans a task: twice CHECK_SPANS spans
    assert _export(receiver, [batch]) == [SpanExportResult.SUCCESS]
    assert sizes == [fastencode.CHECK_SPANS, len(probe_spans())]
    assert receiver.raw == [official_encode(batch)]
    assert FastOTLPSpanExporter.fast is True
