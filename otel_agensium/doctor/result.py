"""What a check reports, and the verdict over all of them: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

OK, FAIL, WARN, SKIPPED = "ok", "FAIL", "warn", "skipped"
VERDICTS = (OK, FAIL, WARN, SKIPPED)


@dataclass
class Result:
    check: str
    verdict: str
    detail: str
    fix: str | None = None
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """``<check> <verdict> <detail> Fix: <fix>``; a skipped check reads ``<check> skipped (<why>)``."""
        detail = " ".join(self.detail.split())  # one line, whatever the error text held
        if self.verdict == SKIPPED:
            return f"{self.check:<16} skipped ({detail})"
        text = f"{self.check:<16} {self.verdict:<7} {detail}"
        if self.fix and self.verdict in (FAIL, WARN):
            text += " Fix: " + " ".join(self.fix.split())
        return text


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def names(items: Iterable[str], limit: int = 8) -> str:
    """``a, b, c and 4 more``: at most ``limit`` names shown."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def exit_status(results: Sequence[Result]) -> int:
    """1 when any check failed; warnings and skipped checks do not fail the run."""
    return 1 if any(r.verdict == FAIL for r in results) else 0


def summary(results: Sequence[Result]) -> str:
    failed = sum(r.verdict == FAIL for r in results)
    warned = sum(r.verdict == WARN for r in results)
    return f"{plural(len(results), 'check')}: {failed} failed, {warned} warned"
