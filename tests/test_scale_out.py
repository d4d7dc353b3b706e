"""Past one machine, on one machine: the agent and gateway Collector configs of deploy/kubernetes,
run unchanged as real processes.

    worker host-a (prefork) -> agent a --\\  load_balancing (DNS)  /-> gateway 1 -\\
    worker host-b (prefork) -> agent b --+-- traces by trace id --+             +-> Prometheus (remote write)
    otel-agensium monitor   -> agent a --/   metrics by resource   \\-> gateway 2 -/
                                                              traces, logs -> one OTLP receiver per gateway

The agents' DNS resolver asks for one name that resolves, in a private mount namespace of the
agents (`unshare -m`, a bind-mounted /etc/hosts), to 127.0.0.2 and 127.0.0.3: one A record per
gateway, as a headless Service gives in Kubernetes. Killing a gateway and taking its record out
is what a pod dying and leaving its Service's endpoints does.

`python -m pytest -q -s tests/test_scale_out.py` prints the measured figures (lines "scale-out:").
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests import prom
from tests.collector import Collector, validate
from tests.otlp_receiver import Receiver, attrs, wait_for
from tests.procs import BIN, ROOT, Proc, celery_worker, free_port, monitor_args

K8S = ROOT / "deploy" / "kubernetes"
AGENT = K8S / "base" / "collector" / "agent.yaml"
GATEWAY = K8S / "base" / "collector" / "gateway.yaml"
TAIL_SAMPLING = K8S / "components" / "tail-sampling" / "tail-sampling.yaml"
GATEWAY_IPS = ("127.0.0.2", "127.0.0.3")
GATEWAY_HOSTNAME = "gateways.otel-agensium.test"
QUEUE = "scaleout"
TASK_METRICS = ("received", "succeeded", "failed")


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    done = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10)
    return done.returncode == 0


pytestmark = [
    pytest.mark.skipif(prom.prometheus_binary() is None, reason="Debian package `prometheus` missing"),
    pytest.mark.skipif(not _unshare_works(), reason="needs root and `unshare -m` for the agents' private /etc/hosts"),
]


def _port_free_on(port: int, hosts: tuple[str, ...]) -> bool:
    for host in hosts:
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _shared_port(hosts: tuple[str, ...]) -> int:
    for _ in range(50):
        port = free_port()
        if _port_free_on(port, hosts):
            return port
    raise AssertionError(f"no port free on all of {hosts}")


def _telemetry(port: int) -> str:
    return f"[{{pull: {{exporter: {{prometheus: {{host: 127.0.0.1, port: {port}}}}}}}}}]"


def _scrape(port: int) -> dict[str, float]:
    """The Collector's own metrics as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def _sum_metric(samples: dict[str, float], name: str, *label_parts: str) -> float:
    """Sum of a Collector counter's series (0.161's own metrics carry no `_total` suffix)."""
    return sum(
        v
        for k, v in samples.items()
        if k.startswith((name + "{", name + "_total{")) and all(part in k for part in label_parts)
    )


class Cluster:
    """Prometheus (remote-write receiver), two gateways, two agents, two workers and the monitor."""

    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.redis_url = redis_url
        self.workdir = workdir
        self.hosts = workdir / "hosts"
        self.grpc_port = _shared_port(GATEWAY_IPS)
        self.receivers = [Receiver().__enter__() for _ in GATEWAY_IPS]
        self.gateways: list[Collector | None] = [None, None]
        self.gateway_telemetry = [0, 0]
        self.agents: list[Collector] = []
        self.agent_telemetry: list[int] = []
        self.agent_endpoints: list[str] = []
        self.procs: list[Proc] = []
        self.prometheus: prom.PrometheusServer | None = None

    # -- topology --------------------------------------------------------------------------------
    def write_hosts(self, live: tuple[int, ...]) -> None:
        """The gateways' DNS name as the agents see it: one record per live gateway."""
        lines = ["127.0.0.1 localhost"] + [f"{GATEWAY_IPS[i]} {GATEWAY_HOSTNAME}" for i in live]
        # In place (same inode): the agents see it through a bind mount.
        with self.hosts.open("r+" if self.hosts.exists() else "w") as fh:
            fh.seek(0)
            fh.write("\n".join(lines) + "\n")
            fh.truncate()

    def start_gateway(self, index: int, tail_sampling: dict[str, str] | None = None) -> Collector:
        env = {
            "REMOTE_WRITE_URL": f"{self.prometheus.url}/api/v1/write",
            "TEMPO_OTLP_ENDPOINT": self.receivers[index].endpoint,
            "LOKI_OTLP_ENDPOINT": self.receivers[index].endpoint,
            **(tail_sampling or {}),
        }
        self.gateway_telemetry[index] = free_port()
        sets = {
            "receivers::otlp::protocols::grpc::endpoint": f"{GATEWAY_IPS[index]}:{self.grpc_port}",
            "service::telemetry::metrics::readers": _telemetry(self.gateway_telemetry[index]),
            # A tap beside remote write: which gateway received which process's series.
            "exporters::otlp_http/tap::endpoint": self.receivers[index].endpoint,
            "service::pipelines::metrics::exporters": "[prometheus_remote_write, otlp_http/tap]",
        }
        if tail_sampling is not None:
            sets["processors::tail_sampling::decision_wait"] = "2s"
        extra = [TAIL_SAMPLING] if tail_sampling is not None else []
        gateway = Collector(GATEWAY, sets=sets, env=env, name=f"gateway {index + 1}", extra_configs=extra).start()
        self.gateways[index] = gateway
        return gateway

    def start_agent(self, node: str) -> tuple[Collector, str]:
        http_port, telemetry_port = free_port(), free_port()
        interval = "1s"  # DNS re-resolution (5s shipped); Go re-reads /etc/hosts at most every 5s
        sets = {
            "receivers::otlp::protocols::grpc::endpoint": f"127.0.0.1:{free_port()}",
            "receivers::otlp::protocols::http::endpoint": f"127.0.0.1:{http_port}",
            "service::telemetry::metrics::readers": _telemetry(telemetry_port),
            **{
                f"exporters::load_balancing/{s}::resolver::dns::{k}": v
                for s in ("traces", "metrics", "logs")
                for k, v in (("port", f'"{self.grpc_port}"'), ("interval", interval))
            },
        }
        wrapper = ["unshare", "-m", "sh", "-c", f'mount --bind "{self.hosts}" /etc/hosts && exec "$@"', "sh"]
        agent = Collector(
            AGENT,
            sets=sets,
            name=f"agent {node}",
            prefix=wrapper,
            env={"NODE_NAME": node, "GATEWAY_HOSTNAME": GATEWAY_HOSTNAME},
        ).start()
        self.agents.append(agent)
        self.agent_telemetry.append(telemetry_port)
        return agent, f"http://127.0.0.1:{http_port}"

    def start(self) -> Cluster:
        self.write_hosts((0, 1))
        self.prometheus = prom.start_prometheus(
            self.workdir / "prom", extra_args=["--web.enable-remote-write-receiver"]
        )
        for index in range(len(GATEWAY_IPS)):
            self.start_gateway(index)
        endpoints = self.agent_endpoints = [self.start_agent(node)[1] for node in ("host-a", "host-b")]
        for node, endpoint in zip(("host-a", "host-b"), endpoints, strict=True):
            self.procs.append(
                celery_worker("tests.apps.tasks_app", self.redis_url, endpoint, QUEUE, name=node, concurrency=2)
            )
        monitor = Proc(
            monitor_args("tests.apps.tasks_app", f"{QUEUE},{QUEUE}-backlog"),
            name="monitor",
            env={
                "TEST_BROKER_URL": self.redis_url,
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoints[0],
                "OTEL_SERVICE_NAME": "celery-monitor",
                "OTEL_METRIC_EXPORT_INTERVAL": "500",
            },
        )
        self.procs.append(monitor)
        monitor.wait_for_line("otel-agensium monitor: watching", timeout=30)
        return self

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        for collector in [*self.agents, *self.gateways]:
            if collector is not None:
                collector.stop()
        if self.prometheus is not None:
            prom.stop_prometheus(self.prometheus)
        for receiver in self.receivers:
            receiver.__exit__()

    # -- reading what arrived ----------------------------------------------------------------------
    def totals(self, queue: str = QUEUE) -> dict[str, float]:
        """Task counters and the duration histogram's count in Prometheus, summed over processes."""
        out = {}
        for name in TASK_METRICS:
            result = prom.query(self.prometheus, f'sum(celery_tasks_{name}_total{{queue="{queue}"}})')["result"]
            out[name] = float(result[0]["value"][1]) if result else 0.0
        result = prom.query(self.prometheus, f'sum(celery_task_duration_seconds_count{{queue="{queue}"}})')["result"]
        out["duration_count"] = float(result[0]["value"][1]) if result else 0.0
        return out

    def wait_totals(self, expected: dict[str, float], timeout: float = 60.0, queue: str = QUEUE) -> float:
        """Waits until Prometheus holds exactly ``expected``; returns the seconds it took."""
        start = time.monotonic()
        last: dict[str, float] = {}

        def exact() -> bool:
            nonlocal last
            last = self.totals(queue)
            return last == expected

        try:
            wait_for(exact, timeout=timeout)
        except AssertionError:
            raise AssertionError(
                f"Prometheus totals {last} != expected {expected}; {self.where_succeeded(queue)}"
            ) from None
        return time.monotonic() - start

    def where_succeeded(self, queue: str) -> str:
        """Per process: celery_tasks_succeeded_total in Prometheus and at each gateway's tap (a failure's detail)."""
        query = f'celery_tasks_succeeded_total{{queue="{queue}"}}'
        in_prometheus = {
            s["metric"].get("instance", "?"): float(s["value"][1]) for s in prom.query(self.prometheus, query)["result"]
        }
        tapped = [
            {
                key[0]: point["dp"].as_int or point["dp"].as_double
                for key, point in r.points("celery_tasks_succeeded").items()
                if point["attributes"].get("queue") == queue
            }
            for r in self.receivers
        ]
        return f"succeeded by instance in Prometheus {in_prometheus}, at the gateways' taps {tapped}"

    def spans_by_gateway(self, task_ids: set[str]) -> list[dict[str, list[dict]]]:
        """Per gateway: trace id -> spans of the traces whose run span carries one of ``task_ids``."""
        out = []
        for receiver in self.receivers:
            spans = receiver.spans()
            wanted = {s["trace_id"] for s in spans if s["attributes"].get("celery.task_id") in task_ids}
            traces: dict[str, list[dict]] = {}
            for span in spans:
                if span["trace_id"] in wanted:
                    traces.setdefault(span["trace_id"], []).append(span)
            out.append(traces)
        return out

    def instances_by_gateway(self, since: list[int]) -> list[set[str]]:
        """Per gateway: service.instance.id of every process whose task metrics it received."""
        out = []
        for receiver, start in zip(self.receivers, since, strict=True):
            seen = set()
            for request in list(receiver.metrics)[start:]:
                for rm in request.resource_metrics:
                    names = {m.name for sm in rm.scope_metrics for m in sm.metrics}
                    if any(n.startswith("celery_task") for n in names):
                        seen.add(attrs(rm.resource.attributes).get("service.instance.id"))
            out.append(seen)
        return out

    def agent_counters(self, outcome: str = "send_failed") -> dict[str, float]:
        """What the agents' load balancers gave up on (``send_failed``) or delivered (``sent``)."""
        samples = [_scrape(port) for port in self.agent_telemetry]
        return {
            kind: sum(
                _sum_metric(s, f"otelcol_exporter_{outcome}_{kind}", f'exporter="load_balancing/{sig}"')
                for s in samples
            )
            for kind, sig in (("spans", "traces"), ("metric_points", "metrics"), ("log_records", "logs"))
        }


@pytest.fixture(scope="module")
def cluster(redis_server, tmp_path_factory):
    from tests.apps import tasks_app

    tasks_app.app.conf.broker_url = redis_server.url
    tasks_app.app.conf.result_backend = redis_server.url
    cluster = Cluster(redis_server.url, tmp_path_factory.mktemp("scale-out"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def _run(workload: list[tuple[str, tuple]], wait: bool = True) -> list:
    """Sends (task, args) pairs to the test queue; returns the AsyncResults (finished if ``wait``)."""
    from tests.apps import tasks_app

    tasks = {"ok": tasks_app.ok, "fail": tasks_app.fail, "sleep": tasks_app.sleep}
    results = [tasks[name].apply_async(args, queue=QUEUE) for name, args in workload]
    if wait:
        _finish(results)
    return results


def _finish(results: list) -> None:
    for result in results:
        try:
            result.get(timeout=60)
        except ValueError:
            pass


def _expected(before: dict[str, float], ok: int, fail: int) -> dict[str, float]:
    return {
        "received": before["received"] + ok + fail,
        "succeeded": before["succeeded"] + ok,
        "failed": before["failed"] + fail,
        "duration_count": before["duration_count"] + ok + fail,
    }


def _figure(text: str) -> None:
    print(f"scale-out: {text}")


# -- the configs ------------------------------------------------------------------------------------


def test_shipped_configs_validate():
    env = {
        "NODE_NAME": "n",
        "GATEWAY_HOSTNAME": "otel-gateway",
        "REMOTE_WRITE_URL": "http://mimir/api/v1/push",
        "TEMPO_OTLP_ENDPOINT": "http://tempo:4318",
        "LOKI_OTLP_ENDPOINT": "http://loki/otlp",
    }
    for config, extra in ((AGENT, []), (GATEWAY, []), (GATEWAY, [TAIL_SAMPLING])):
        done = validate(config, extra_configs=extra, env=env)
        assert done.returncode == 0, f"{config.name} {extra}: {done.stderr[-2000:]}"
    broken = validate(AGENT, ["exporters::load_balancing/metrics::routing_key=process"], env=env)
    assert broken.returncode != 0 and "routing_key" in broken.stderr


# -- one workload, every count exact ----------------------------------------------------------------


def test_counts_exact_traces_whole_series_on_one_gateway(cluster):
    before = cluster.totals()
    taps = [len(r.metrics) for r in cluster.receivers]
    workload = [("ok", (i,)) for i in range(40)] + [("fail", ())] * 8 + [("sleep", (0.05,))] * 12
    results = _run(workload)
    cluster.wait_totals(_expected(before, ok=52, fail=8))

    # Every task's trace arrived whole at exactly one gateway, and both gateways took a share.
    task_ids = {r.id for r in results}
    wait_for(
        lambda: len(set().union(*[set(t) for t in cluster.spans_by_gateway(task_ids)])) == len(task_ids), timeout=30
    )
    by_gateway = cluster.spans_by_gateway(task_ids)
    traces = [set(t) for t in by_gateway]
    assert not traces[0] & traces[1], "a trace's spans reached both gateways"
    assert len(traces[0] | traces[1]) == len(task_ids)
    assert traces[0] and traces[1], "the agents sent every trace to one gateway"
    seen_task_ids = {s["attributes"].get("celery.task_id") for t in by_gateway for spans in t.values() for s in spans}
    assert task_ids <= seen_task_ids

    # Logs are routed by trace id too: a task's lines all reach one gateway, and the tasks' lines
    # spread over both. Not necessarily the gateway of the trace's spans: 0.161 hashes a span's
    # trace id as 16 raw bytes and a log record's as its hex string (harmless: Loki needs no
    # co-location, only tail sampling does).
    def log_gateways() -> dict[str, set[int]]:
        where: dict[str, set[int]] = {}
        for index, receiver in enumerate(cluster.receivers):
            for record in receiver.log_records():
                if record["trace_id"] in traces[0] | traces[1]:
                    where.setdefault(record["trace_id"], set()).add(index)
        return where

    wait_for(lambda: len(log_gateways()) >= 40, timeout=30)  # the 40 t.ok runs log a line each
    logs = log_gateways()
    assert all(len(gateways) == 1 for gateways in logs.values()), logs
    assert {next(iter(g)) for g in logs.values()} == {0, 1}
    beside = sum(1 for trace_id, g in logs.items() if g == {0 if trace_id in traces[0] else 1})

    # Each process's series went to one gateway only (pool children have their own instance ids).
    instances = cluster.instances_by_gateway(taps)
    assert not instances[0] & instances[1], f"a process's series reached both gateways: {instances}"
    in_prometheus = prom.query(
        cluster.prometheus, f'group by (job, instance) (celery_tasks_received_total{{queue="{QUEUE}"}})'
    )
    labels = {(s["metric"]["job"], s["metric"]["instance"]) for s in in_prometheus["result"]}
    assert {job for job, _ in labels} == {"worker-host-a", "worker-host-b"}
    assert {instance for _, instance in labels} <= instances[0] | instances[1]
    assert len(labels) >= 2, labels  # at least one pool child per host ran tasks
    _figure(
        f"{len(task_ids)} tasks: traces per gateway {len(traces[0])}/{len(traces[1])}, "
        f"processes per gateway {len(instances[0])}/{len(instances[1])}, "
        f"traces whose log lines went to the gateway of their spans {beside}/{len(logs)}"
    )


def test_dashboards_and_alerts_unchanged_on_remote_write(cluster):
    from tests.test_stack_live import SEED_TASK_PANELS, _dashboards

    before = cluster.totals()
    # Two rounds a second apart so rate() has two samples of every counter in its window.
    for _ in range(2):
        _run([("ok", (1,))] * 4 + [("fail", ())])
        time.sleep(1.0)
    cluster.wait_totals(_expected(before, ok=8, fail=2))
    exprs = [(f"{name}: {where}", expr) for name, dash in _dashboards() for where, expr in prom.dashboard_promql(dash)]
    exprs += [
        (f"alerts.yml: {name}", expr)
        for name, expr in prom.rules_promql(yaml.safe_load((ROOT / "alerts.yml").read_text()))
    ]
    errors, panels = [], set()
    for where, expr in exprs:
        try:
            result = prom.query(cluster.prometheus, prom.expand_grafana_variables(expr))["result"]
        except prom.PrometheusError as exc:
            errors.append(f"{where}: {exc}")
            continue
        title = next((t for t in SEED_TASK_PANELS if t in where), None)
        if title is not None and result:
            panels.add(title)
    assert not errors, "\n".join(errors)
    assert panels == set(SEED_TASK_PANELS)
    # `sum by (queue)` over the processes' series adds up to the queue's workload.
    result = prom.query(cluster.prometheus, "sum by (queue) (celery_tasks_failed_total)")["result"]
    assert {s["metric"]["queue"]: float(s["value"][1]) for s in result}[QUEUE] == before["failed"] + 2


def test_keda_trigger_query_sees_the_backlog(cluster):
    """The workers' ScaledObject query, run on the remote-written data, counts waiting messages."""
    from tests.apps import tasks_app

    query = _keda_query("profile").replace('queue="profile"', f'queue="{QUEUE}-backlog"')
    for i in range(7):
        tasks_app.ok.apply_async((i,), queue=f"{QUEUE}-backlog")
    result = prom.wait_for_result(cluster.prometheus, f"({query}) == 7", timeout=30)
    assert float(result[0]["value"][1]) == 7


def _keda_query(queue: str) -> str:
    for doc in yaml.safe_load_all((K8S / "base" / "workers.yaml").read_text()):
        if doc and doc.get("kind") == "ScaledObject" and doc["metadata"]["name"] == f"worker-{queue}":
            (trigger,) = doc["spec"]["triggers"]
            assert trigger["type"] == "prometheus"
            return trigger["metadata"]["query"]
    raise AssertionError(f"no ScaledObject worker-{queue} in base/workers.yaml")


def _worker_pod(queue: str) -> tuple[list[str], dict[str, str], int]:
    """The worker Deployment's container command, env values and grace period, as shipped."""
    for doc in yaml.safe_load_all((K8S / "base" / "workers.yaml").read_text()):
        if doc and doc.get("kind") == "Deployment" and doc["metadata"]["name"] == f"worker-{queue}":
            pod = doc["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
            return container["command"], env, pod["terminationGracePeriodSeconds"]
    raise AssertionError(f"no Deployment worker-{queue} in base/workers.yaml")


def test_worker_pod_command_sigterm_to_pid_1_loses_no_task_and_no_telemetry(cluster):
    """The profile pool's container command, run as the kubelet would: the process started is the
    one that gets SIGTERM; two tasks running then still finish and are counted in Prometheus."""
    from tests.apps import tasks_app

    command, env, grace = _worker_pod("profile")
    queue = f"{QUEUE}-pod"
    args = [str(BIN / command[0]) if (BIN / command[0]).exists() else command[0], *command[1:]]
    args[args.index("-A") + 1] = "tests.apps.tasks_app"
    args[args.index("-Q") + 1] = queue
    pod = Proc(
        args,
        name="worker pod",
        env={
            **env,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "TEST_BROKER_URL": cluster.redis_url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": cluster.agent_endpoints[0],
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_PYTHON_DISTRO": "agensium",
            "OTEL_PYTHON_CONFIGURATOR": "agensium",
        },
    )
    try:
        pod.wait_for_line("ready.", timeout=60)
        # opentelemetry-instrument exec()ed celery: the started process is Celery's main process.
        cmdline = Path(f"/proc/{pod.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert any(part.endswith(b"/celery") for part in cmdline), cmdline
        assert not any(b"opentelemetry-instrument" in part for part in cmdline), cmdline
        results = [tasks_app.sleep.apply_async((3.0,), queue=queue) for _ in range(2)]
        cluster.wait_totals({"received": 2, "succeeded": 0, "failed": 0, "duration_count": 0}, queue=queue)
        started = time.monotonic()
        code = pod.stop(signal.SIGTERM, timeout=min(grace, 60))  # the tasks take 3 s
        stopped_in = time.monotonic() - started
    finally:
        pod.stop(signal.SIGKILL, timeout=10)
    assert code == 0, pod.output[-3000:]
    assert [r.get(timeout=10) for r in results] == [3.0, 3.0]
    # The last export, flushed during the warm shutdown, carries both successes.
    cluster.wait_totals({"received": 2, "succeeded": 2, "failed": 0, "duration_count": 2}, queue=queue)
    _figure(
        f"worker pod (profile pool's command): SIGTERM with 2 tasks running -> exit 0 after {stopped_in:.1f}s "
        f"(grace {grace}s), both tasks succeeded and counted"
    )


# -- a gateway dies mid-run -------------------------------------------------------------------------


def test_gateway_killed_mid_run_agents_reroute_counters_exact(cluster):
    before = cluster.totals()
    failed_before = cluster.agent_counters()
    results = _run([("sleep", (0.2,))] * 60, wait=False)
    wait_for(lambda: sum(r.ready() for r in results) >= 15, timeout=60)
    # What gateway 2 had taken in, read just before it dies, against what it passed on.
    accepted = _scrape(cluster.gateway_telemetry[1])
    done_at_kill = sum(r.ready() for r in results)
    killed_at = time.monotonic()
    cluster.gateways[1].stop(sig=signal.SIGKILL)
    cluster.write_hosts((0,))  # the dead pod leaves the headless Service
    try:
        gone = {
            "spans": _sum_metric(accepted, "otelcol_receiver_accepted_spans") - _count(cluster.receivers[1], "spans"),
            "metric_points": _sum_metric(accepted, "otelcol_receiver_accepted_metric_points")
            - _count(cluster.receivers[1], "points"),
        }
        _finish(results)
        recovered = cluster.wait_totals(_expected(before, ok=60, fail=0), timeout=90) + (time.monotonic() - killed_at)
        task_ids = {r.id for r in results}
        deadline = time.monotonic() + 15
        while len(_kept(cluster, task_ids)) < len(task_ids) and time.monotonic() < deadline:
            time.sleep(0.5)
        arrived = _kept(cluster, task_ids)
        failed = {k: v - failed_before[k] for k, v in cluster.agent_counters().items()}
        _figure(
            f"gateway 2 SIGKILLed after {done_at_kill}/60 tasks: task counters in Prometheus back to the exact "
            f"totals {recovered:.1f}s after the kill; run spans arrived {len(arrived)}/60; "
            f"taken in by gateway 2 but never passed on: about {gone['spans']:.0f} spans, "
            f"{gone['metric_points']:.0f} metric points; agents' sends failed after retries: {json.dumps(failed)}"
        )
        # Whatever was lost, the traces of tasks run after the re-route all arrived.
        assert len(arrived) >= 60 - done_at_kill - 4
        assert failed["metric_points"] == 0
        assert all(cluster.agent_counters("sent").values()), "the agents' exporter counters were not found"
    finally:
        cluster.start_gateway(1)
        cluster.write_hosts((0, 1))


def _count(receiver: Receiver, kind: str) -> int:
    """Spans or metric data points a receiver got, in every request so far."""
    if kind == "spans":
        return len(receiver.spans())
    return sum(
        len(getattr(m, m.WhichOneof("data")).data_points)
        for request in list(receiver.metrics)
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    )


# -- tail sampling ----------------------------------------------------------------------------------


def test_tail_sampling_keeps_failed_and_slow_and_a_ratio_metrics_exact(cluster):
    percentage = 25
    sampling = {"TAIL_SAMPLING_SLOW_MS": "400", "TAIL_SAMPLING_PERCENTAGE": str(percentage)}
    for index in range(len(GATEWAY_IPS)):
        cluster.gateways[index].stop()
        cluster.start_gateway(index, tail_sampling=sampling)
    try:
        before = cluster.totals()
        ok = _run([("ok", (i,)) for i in range(80)])
        failed = _run([("fail", ())] * 10)
        slow = _run([("sleep", (0.6,))] * 10)
        cluster.wait_totals(_expected(before, ok=90, fail=10))  # metrics: every task, sampled or not

        must_keep = {r.id for r in failed + slow}
        wait_for(lambda: must_keep <= _kept(cluster, must_keep), timeout=40)
        time.sleep(3)  # decisions for the ok traces are due by now (same decision_wait)
        kept_ok = _kept(cluster, {r.id for r in ok})
        # The ratio policy hashes trace ids: binomial around 25% of 80 = 20 (sd 3.9); 4 sd either side.
        mean, sd = 80 * percentage / 100, math.sqrt(80 * 0.25 * 0.75)
        _figure(
            f"tail sampling: kept 10/10 failed, 10/10 slow, {len(kept_ok)}/80 others ({percentage}% configured); "
            "task counters exact"
        )
        assert mean - 4 * sd <= len(kept_ok) <= mean + 4 * sd
    finally:
        for index in range(len(GATEWAY_IPS)):
            cluster.gateways[index].stop()
            cluster.start_gateway(index)


def _kept(cluster: Cluster, task_ids: set[str]) -> set[str]:
    return {
        s["attributes"].get("celery.task_id")
        for t in cluster.spans_by_gateway(task_ids)
        for spans in t.values()
        for s in spans
    } & task_ids
