"""The real otelcol-agensium for the tests: built once by collector/build.sh, run on free ports."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.procs import ROOT, Proc, free_port

BUILD_SCRIPT = ROOT / "collector" / "build.sh"
SHIPPED_CONFIG = ROOT / "collector" / "config.yaml"


@functools.cache
def collector_binary() -> str:
    """Path of otelcol-agensium built from collector/builder-config.yaml (cached outside the repo)."""
    done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise AssertionError(f"collector/build.sh failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


def validate(config: Path, sets: Sequence[str] = (), *, extra_configs: Sequence[Path] = (),
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """``otelcol-agensium validate`` on ``config`` (and ``extra_configs`` merged over it): exit status and output."""
    configs = [f"--config={c}" for c in (config, *extra_configs)]
    args = [collector_binary(), "validate", *configs, *(f"--set={s}" for s in sets)]
    full_env = {**os.environ, **env} if env is not None else None
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=full_env)


class Collector:
    """One Collector process; ``sets`` are ``--set key::path=value`` overrides of ``config``."""

    def __init__(self, config: Path = SHIPPED_CONFIG, sets: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None, name: str = "collector",
                 extra_configs: Sequence[Path] = (), prefix: Sequence[str] = ()) -> None:
        """``extra_configs`` are merged over ``config`` (later files win, lists replace lists);
        ``prefix`` runs the binary under a wrapper command (e.g. a private mount namespace)."""
        self.config = config
        self.extra_configs = list(extra_configs)
        self.prefix = list(prefix)
        self.health_port = free_port()
        self.sets = {"extensions::health_check::endpoint": f"127.0.0.1:{self.health_port}", **(sets or {})}
        self.env = dict(env or {})
        self.name = name
        self.proc: Proc | None = None

    def start(self, timeout: float = 30.0) -> Collector:
        configs = [f"--config={c}" for c in (self.config, *self.extra_configs)]
        args = [*self.prefix, collector_binary(), *configs, *(f"--set={k}={v}" for k, v in self.sets.items())]
        self.proc = Proc(args, env=self.env, name=self.name)
        self.proc.wait_http_ok(f"http://127.0.0.1:{self.health_port}/", timeout=timeout)
        return self

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        code = self.proc.stop(sig, timeout=timeout)
        return code

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
