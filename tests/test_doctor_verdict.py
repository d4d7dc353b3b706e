"""The doctor's verdict logic and its check runner, without a broker: pure functions."""

from __future__ import annotations

import pytest

from otel_agensium.doctor import CHECKS, Check, Context, diagnose
from otel_agensium.doctor.failures import kind
from otel_agensium.doctor.result import FAIL, OK, SKIPPED, WARN, Result, exit_status, names, summary
from otel_agensium.settings import load


def _ctx() -> Context:
    return Context(load(environ={}), timeout=0.5, inspect_timeout=0.5)


def test_exit_status_fails_only_on_fail():
    assert exit_status([Result("a", OK, "x"), Result("b", WARN, "y"), Result("c", SKIPPED, "z")]) == 0
    assert exit_status([Result("a", OK, "x"), Result("b", FAIL, "y")]) == 1
    assert exit_status([]) == 0


def test_summary_counts_failed_and_warned():
    results = [Result("a", FAIL, "x"), Result("b", WARN, "y"), Result("c", WARN, "z"), Result("d", OK, "w")]
    assert summary(results) == "4 checks: 1 failed, 2 warned"
    assert summary([Result("a", OK, "x")]) == "1 check: 0 failed, 0 warned"


def test_line_is_one_line_with_fix_only_when_wrong():
    line = Result("broker", FAIL, "down\nreally", "Start it.").line()
    assert line == f"{'broker':<16} {'FAIL':<7} down really Fix: Start it."
    assert "Fix" not in Result("broker", OK, "up", "never shown").line()
    assert Result("workers", SKIPPED, "broker unreachable").line() == f"{'workers':<16} skipped (broker unreachable)"


def test_names_are_bounded():
    assert names([str(i) for i in range(10)], limit=3) == "0, 1, 2 and 7 more"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "refused"),
        (TimeoutError(), "timeout"),
        (Exception("WRONGPASS invalid username-password pair"), "auth"),
        (Exception("Temporary failure in name resolution"), "dns"),
        (Exception("something odd"), "other"),
    ],
)
def test_failure_kinds(exc, expected):
    assert kind(exc) == expected


def test_a_check_that_raises_is_a_fail_line_and_the_others_still_run():
    def boom(ctx: Context) -> Result:
        raise RuntimeError("broken check")

    results = diagnose(_ctx(), [Check("boom", boom), Check("fine", lambda ctx: Result("fine", OK, "yes"))])
    assert [(r.check, r.verdict) for r in results] == [("boom", FAIL), ("fine", OK)]
    assert "RuntimeError: broken check" in results[0].detail


def test_a_background_check_that_never_ends_is_bounded_and_keeps_its_place():
    import threading

    never = threading.Event()

    def hangs(ctx: Context) -> Result:
        never.wait(5)
        return Result("slow", OK, "late")

    checks = [
        Check("slow", hangs, background=True, on_error=lambda ctx, exc: Result("slow", FAIL, "too slow")),
        Check("after", lambda ctx: Result("after", OK, "yes")),
    ]
    results = diagnose(_ctx(), checks)
    never.set()
    assert [(r.check, r.verdict, r.detail) for r in results] == [("slow", FAIL, "too slow"), ("after", OK, "yes")]


def test_one_list_names_every_check_once():
    assert [c.name for c in CHECKS] == [
        "settings",
        "app",
        "broker",
        "workers",
        "queues",
        "beat",
        "eta",
        "otlp",
        "time_limits",
        "memory_limit",
    ]
