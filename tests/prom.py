"""A real Prometheus server for tests, and the PromQL found in the stack's files.

Plain functions, no pytest fixtures, so any test module can build its own fixture:

    @pytest.fixture
    def prometheus_server(tmp_path):
        servers = []

        def start(scrape_targets):
            server = start_prometheus(tmp_path / f"prom{len(servers)}", scrape_targets)
            servers.append(server)
            return server

        yield start
        for server in servers:
            stop_prometheus(server)

Prometheus is 3.16, built from its Go module by collector/build-prometheus.sh
(cached outside the repository), or Debian's 2.42 (package `prometheus`) where
Go is missing; AGENSIUM_TEST_PROMETHEUS=/path picks one. Every wait here is
bounded and every server is stopped, even when it failed to start.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMETHEUS_DATASOURCE_UID = "prometheus"

# What Grafana would put in place of its variables, for running a dashboard's
# queries outside Grafana. Template variables take their "All" value, which is how
# the dashboard opens; the interval variables take plausible values.
GRAFANA_DEFAULTS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__interval_ms": "30000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
    "queue": ".*",
    "task_name": ".*",
    "service": ".+",
    "task_id": "",
    "slow": "60s",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::[\w-]+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.S)


class PrometheusError(RuntimeError):
    """Prometheus did not start, or answered a query with an error."""


@dataclass
class PrometheusServer:
    url: str
    port: int
    process: subprocess.Popen
    workdir: Path
    config_path: Path
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "collector" / "build-prometheus.sh"


@functools.cache
def prometheus_binary() -> str | None:
    """Prometheus 3 built from its Go module by collector/build-prometheus.sh (cached), else
    Debian's 2.42 when Go is missing; None when neither is there."""
    if os.environ.get("AGENSIUM_TEST_PROMETHEUS"):  # a binary of your choice, e.g. /usr/bin/prometheus
        return os.environ["AGENSIUM_TEST_PROMETHEUS"]
    done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800)
    if done.returncode == 0:
        return done.stdout.strip().splitlines()[-1]
    if done.returncode != 2:  # Go is there but the build failed: say so rather than test 2.42 quietly
        raise PrometheusError(f"collector/build-prometheus.sh failed:\n{done.stderr[-3000:]}")
    return shutil.which("prometheus")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(
    path: Path,
    scrape_targets: Sequence[str] = (),
    *,
    scrape_interval: str = "1s",
    job_name: str = "app",
    metrics_path: str = "/metrics",
    honor_labels: bool = True,
    rule_files: Sequence[str | Path] = (),
    scrape_configs: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Writes a prometheus.yml scraping `scrape_targets` ("host:port") as one job.

    honor_labels keeps the job/instance labels an OTel Prometheus exporter sets
    from service.name/service.instance.id, as prometheus.yml does in the stack.
    `scrape_configs` are further jobs, taken as they are (e.g. the shipped
    prometheus.yml's jobs with their targets moved to local ports).
    """
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [],
    }
    if scrape_targets:
        config["scrape_configs"].append(
            {
                "job_name": job_name,
                "honor_labels": honor_labels,
                "metrics_path": metrics_path,
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "static_configs": [{"targets": list(scrape_targets)}],
            }
        )
    config["scrape_configs"].extend(dict(job) for job in scrape_configs)
    if rule_files:
        config["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
    # JSON is YAML: no yaml dependency needed here.
    path.write_text(json.dumps(config, indent=2))
    return path


def start_prometheus(
    workdir: Path,
    scrape_targets: Sequence[str] = (),
    *,
    scrape_interval: str = "1s",
    job_name: str = "app",
    metrics_path: str = "/metrics",
    rule_files: Sequence[str | Path] = (),
    scrape_configs: Sequence[Mapping[str, Any]] = (),
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> PrometheusServer:
    """Starts Prometheus on a free loopback port with its own storage in `workdir`.

    Returns once /-/ready answers 200; raises PrometheusError (with the server's
    log) if it exits or is not ready within `timeout` seconds. Ready is not
    scraped: Prometheus 2.42 applies its targets a few seconds after start (its
    discovery manager updates every 5s), so poll with wait_for_result() before
    asserting on data, and give rate() at least two scrapes inside its window.
    """
    binary = prometheus_binary()
    if binary is None:
        raise PrometheusError("the `prometheus` binary is not installed (Debian package `prometheus`)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = write_config(
        workdir / "prometheus.yml",
        scrape_targets,
        scrape_interval=scrape_interval,
        job_name=job_name,
        metrics_path=metrics_path,
        rule_files=rule_files,
        scrape_configs=scrape_configs,
    )
    last_error: PrometheusError | None = None
    # A free port can be taken between free_port() and the bind: retry on a new one.
    for attempt in range(3):
        port = free_port()
        log_path = workdir / f"prometheus-{attempt}.log"
        data_dir = workdir / f"data-{attempt}"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={data_dir}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=1h",
                    "--enable-feature=exemplar-storage",
                    "--log.level=warn",
                    *extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = PrometheusServer(
            url=f"http://127.0.0.1:{port}",
            port=port,
            process=process,
            workdir=workdir,
            config_path=config_path,
            log_path=log_path,
        )
        try:
            _wait_ready(server, timeout)
            return server
        except PrometheusError as exc:
            stop_prometheus(server)
            last_error = exc
            if "address already in use" not in server.log():
                break
    assert last_error is not None
    raise last_error


def _wait_ready(server: PrometheusServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise PrometheusError(
                f"prometheus exited with {server.process.returncode} before it was ready:\n{server.log()}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise PrometheusError(f"prometheus not ready after {timeout}s:\n{server.log()}")
        time.sleep(0.1)


def stop_prometheus(server: PrometheusServer, timeout: float = 10.0) -> None:
    """Stops the server: SIGTERM, then SIGKILL after `timeout` seconds."""
    process = server.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


@contextmanager
def running_prometheus(workdir: Path, scrape_targets: Sequence[str] = (), **kwargs: Any) -> Iterator[PrometheusServer]:
    server = start_prometheus(workdir, scrape_targets, **kwargs)
    try:
        yield server
    finally:
        stop_prometheus(server)


def api_get(server: PrometheusServer | str, path: str, params: Mapping[str, str], timeout: float = 10.0) -> dict:
    """GET an /api/v1 endpoint; returns the decoded body, errors included (status "error")."""
    base = server if isinstance(server, str) else server.url
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        # Bad queries answer 400/422 with a JSON body that says why.
        body = exc.read()
        try:
            return json.loads(body)
        except ValueError:
            raise PrometheusError(f"{url}: HTTP {exc.code}: {body[:500]!r}") from exc


def query(server: PrometheusServer | str, expr: str, *, at: float | None = None, timeout: float = 10.0) -> dict:
    """Runs an instant query. Returns `data` ({resultType, result}); raises PrometheusError on an error."""
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    body = api_get(server, "/api/v1/query", params, timeout=timeout)
    if body.get("status") != "success":
        raise PrometheusError(f"{body.get('errorType')}: {body.get('error')} in query: {expr}")
    return body["data"]


def wait_for_result(server: PrometheusServer | str, expr: str, timeout: float = 30.0, interval: float = 0.5) -> list:
    """Polls an instant query until it returns at least one series; returns the result."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(server, expr)["result"]
        if result:
            return result
        if time.monotonic() > deadline:
            raise PrometheusError(f"no data after {timeout}s for: {expr}")
        time.sleep(interval)


def query_exemplars(server: PrometheusServer | str, expr: str, start: float, end: float) -> list[dict]:
    """Exemplars stored for the series of `expr` between `start` and `end` (unix seconds)."""
    body = api_get(server, "/api/v1/query_exemplars", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}"})
    if body.get("status") != "success":
        raise PrometheusError(f"{body.get('errorType')}: {body.get('error')} in exemplar query: {expr}")
    return body["data"]


def expand_grafana_variables(expr: str, values: Mapping[str, str] | None = None) -> str:
    """Replaces Grafana variables ($var, ${var}, ${var:format}, [[var]]) with concrete values.

    `values` overrides GRAFANA_DEFAULTS. An unknown variable raises KeyError, so a
    dashboard that grows a new variable cannot slip through untested.
    """
    table = {**GRAFANA_DEFAULTS, **(values or {})}

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in table:
            raise KeyError(f"no value for Grafana variable ${name} in: {expr}")
        return table[name]

    return _VARIABLE.sub(replace, expr)


def iter_panels(panels: Iterable[dict]) -> Iterator[dict]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels") or [])


def dashboard_promql(dashboard: dict, datasource_uid: str = PROMETHEUS_DATASOURCE_UID) -> list[tuple[str, str]]:
    """(where, expr) for every PromQL expression in a dashboard model.

    Panel targets on the Prometheus datasource, and the series selector inside
    `label_values(selector, label)` variable queries.
    """
    found: list[tuple[str, str]] = []
    for panel in iter_panels(dashboard.get("panels", [])):
        panel_uid = (panel.get("datasource") or {}).get("uid")
        for target in panel.get("targets", []):
            uid = (target.get("datasource") or {}).get("uid", panel_uid)
            if uid == datasource_uid and target.get("expr"):
                found.append((f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if (variable.get("datasource") or {}).get("uid") != datasource_uid:
            continue
        raw = variable.get("query")
        text = raw.get("query", "") if isinstance(raw, dict) else (raw or "")
        match = _LABEL_VALUES.match(text)
        if match:
            found.append((f"variable {variable['name']}", match.group(1)))
        elif text:
            found.append((f"variable {variable['name']}", text))
    return found


def rules_promql(rules: dict) -> list[tuple[str, str]]:
    """(alert or record name, expr) for every rule in a Prometheus rule file."""
    return [
        (rule.get("alert") or rule.get("record"), rule["expr"])
        for group in rules.get("groups", [])
        for rule in group.get("rules", [])
    ]
