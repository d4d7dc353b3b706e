"""The real otelcol-agensium for the tests: built once by collector/build.sh, run on free ports."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

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


def _is_collector_config(doc: object) -> bool:
    return isinstance(doc, dict) and {"receivers", "exporters", "service"} <= set(doc)


def shipped_configs() -> list[tuple[Path, str]]:
    """(file, config text) for every Collector config the repository ships.

    Plain config files under collector/ and deploy/, and configs embedded as strings in
    Kubernetes manifests (a ConfigMap's ``data``); the builder manifest is not a config.
    """
    found: list[tuple[Path, str]] = []
    paths = sorted({*ROOT.glob("collector/*.yaml"), *ROOT.glob("deploy/**/*.yaml"), *ROOT.glob("deploy/**/*.yml")})
    for path in paths:
        text = path.read_text()
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError:
            continue  # Helm templates are not YAML until rendered
        for doc in docs:
            if _is_collector_config(doc):
                found.append((path, text if len(docs) == 1 else yaml.safe_dump(doc)))
            elif isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                for value in (doc.get("data") or {}).values():
                    try:
                        embedded = yaml.safe_load(value)
                    except yaml.YAMLError:
                        continue
                    if _is_collector_config(embedded):
                        found.append((path, value))
    return found


def validate(config: Path, sets: Sequence[str] = (), env: Mapping[str, str] | None = None
             ) -> subprocess.CompletedProcess:
    """``otelcol-agensium validate`` on ``config``: exit status and output."""
    args = [collector_binary(), "validate", "--config", str(config), *(f"--set={s}" for s in sets)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


class Collector:
    """One Collector process; ``sets`` are ``--set key::path=value`` overrides of ``config``."""

    def __init__(self, config: Path = SHIPPED_CONFIG, sets: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None, name: str = "collector") -> None:
        self.config = config
        self.health_port = free_port()
        self.sets = {"extensions::health_check::endpoint": f"127.0.0.1:{self.health_port}", **(sets or {})}
        self.env = dict(env or {})
        self.name = name
        self.proc: Proc | None = None

    def start(self, timeout: float = 30.0) -> Collector:
        args = [collector_binary(), "--config", str(self.config), *(f"--set={k}={v}" for k, v in self.sets.items())]
        self.proc = Proc(args, env=self.env, name=self.name)
        self.proc.wait_http_ok(f"http://127.0.0.1:{self.health_port}/", timeout=timeout)
        return self

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        code = self.proc.stop(timeout=timeout)
        return code

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
