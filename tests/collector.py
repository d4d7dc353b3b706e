"""The real otelcol-agensium for the tests: built once by collector/build.sh, run on free ports."""

from __future__ import annotations

import functools
import os
import signal
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


def validate(
    config: Path, sets: Sequence[str] = (), *, extra_configs: Sequence[Path] = (), env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``otelcol-agensium validate`` on ``config`` (and ``extra_configs`` merged over it): exit status and output."""
    configs = [f"--config={c}" for c in (config, *extra_configs)]
    args = [collector_binary(), "validate", *configs, *(f"--set={s}" for s in sets)]
    full_env = {**os.environ, **env} if env is not None else None
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=full_env)


class Collector:
    """One Collector process; ``sets`` are ``--set key::path=value`` overrides of ``config``."""

    def __init__(
        self,
        config: Path = SHIPPED_CONFIG,
        sets: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        name: str = "collector",
        extra_configs: Sequence[Path] = (),
        prefix: Sequence[str] = (),
    ) -> None:
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


def _telemetry_reader(port: int) -> str:
    """``service::telemetry::metrics::readers`` as a YAML value for ``--set``: the internal metrics on ``port``."""
    return f"[{{pull: {{exporter: {{prometheus: {{host: 127.0.0.1, port: {port}}}}}}}}}]"


class AgensiumCollector(Collector):
    """collector/config.yaml as shipped, every endpoint moved onto a free local port with ``--set``.

    ``tempo`` is a host:port speaking OTLP gRPC, ``loki`` an OTLP/HTTP base URL. The ports stay
    the same across stop() and start(), so a restarted Collector is the same endpoint.
    """

    def __init__(self, tempo: str, loki: str, sets: Mapping[str, str] | None = None, name: str = "collector") -> None:
        self.otlp_grpc_port, self.otlp_http_port = free_port(), free_port()
        self.prometheus_port, self.telemetry_port = free_port(), free_port()
        super().__init__(
            SHIPPED_CONFIG,
            name=name,
            sets={
                "receivers::otlp::protocols::grpc::endpoint": f"127.0.0.1:{self.otlp_grpc_port}",
                "receivers::otlp::protocols::http::endpoint": f"127.0.0.1:{self.otlp_http_port}",
                "exporters::prometheus::endpoint": f"127.0.0.1:{self.prometheus_port}",
                "exporters::otlp_grpc/tempo::endpoint": tempo,
                "exporters::otlp_http/loki::endpoint": loki,
                "service::telemetry::metrics::readers": _telemetry_reader(self.telemetry_port),
                **(sets or {}),
            },
        )

    @property
    def otlp_endpoint(self) -> str:
        """What the SDK's OTEL_EXPORTER_OTLP_ENDPOINT points at (OTLP/HTTP)."""
        return f"http://127.0.0.1:{self.otlp_http_port}"

    def scrape_configs(self) -> list[dict]:
        """The shipped prometheus.yml's two Collector jobs, targets moved to this Collector's ports."""
        shipped = yaml.safe_load((ROOT / "prometheus.yml").read_text())["scrape_configs"]
        targets = {"otel-collector": self.prometheus_port, "otel-collector-internal": self.telemetry_port}
        jobs = []
        for job in shipped:
            if job["job_name"] in targets:
                jobs.append(
                    {
                        **job,
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "static_configs": [{"targets": [f"127.0.0.1:{targets[job['job_name']]}"]}],
                    }
                )
        assert len(jobs) == 2, f"prometheus.yml lost a Collector job: {[j['job_name'] for j in shipped]}"
        return jobs


TEMPO_STANDIN = ROOT / "tests" / "tempo_standin.yaml"


class TempoStandIn(Collector):
    """A second otelcol-agensium in Tempo's place: OTLP gRPC in with Tempo's default 4 MiB message
    limit, each accepted request forwarded over OTLP/HTTP to ``sink`` (a tests.otlp_receiver)."""

    def __init__(self, sink: str, name: str = "tempo stand-in") -> None:
        self.port = free_port()
        super().__init__(
            TEMPO_STANDIN,
            name=name,
            sets={
                "receivers::otlp::protocols::grpc::endpoint": f"127.0.0.1:{self.port}",
                "exporters::otlp_http/sink::endpoint": sink,
            },
        )

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"


def own_metric(collector: AgensiumCollector, name: str) -> float:
    """Sum of every sample of the Collector's own metric ``name`` (0 when it has none yet)."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{collector.telemetry_port}/metrics", timeout=5).text
    # Plain text exposition: `name{labels} value` or `name value` (the parser in prometheus_client
    # would rename counters that lack the `_total` suffix, which 0.161's own metrics do).
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((f"{name}{{", f"{name} "))
    )
