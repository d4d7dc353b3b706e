"""The monitoring stack's files, tested as far as files can be tested here.

Run for real: promtool (check config, check rules, test rules), amtool
(check-config) and a Prometheus server that parses and runs every PromQL
expression of the dashboards, the alerts and the datasource links; Grafana's own
LogQL/TraceQL parsers in tests/test_query_parsers.py; the Collector in the tests
that run the built otelcol-agensium. Not runnable here (no container engine, no
binaries): Tempo, Loki, Grafana and the images; their files are checked for
structure and for agreement with each other and with compose.otel.yaml (names,
ports, uids, mounts, the faults found by reading the pinned releases' source).

Needs pyyaml and jsonschema; the promtool/prometheus/amtool tests skip when the
Debian packages `prometheus` / `prometheus-alertmanager` are missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
import yaml

from tests.prom import (
    dashboard_promql,
    expand_grafana_variables,
    iter_panels,
    prometheus_binary,
    query,
    rules_promql,
    running_prometheus,
)

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose.otel.yaml"
COLLECTOR = REPO / "collector" / "config.yaml"
COLLECTOR_MANIFEST = REPO / "collector" / "builder-config.yaml"
PROMETHEUS = REPO / "prometheus.yml"
ALERTS = REPO / "alerts.yml"
ALERTS_TEST = REPO / "tests" / "rules" / "alerts_test.yml"
ALERTMANAGER = REPO / "alertmanager" / "alertmanager.yml"
TEMPO = REPO / "tempo" / "tempo.yaml"
LOKI = REPO / "loki" / "loki.yaml"
DATASOURCES = REPO / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARD_PROVIDERS = REPO / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
ENV_EXAMPLE = REPO / ".env.example"

# The SPEC's names (../shared/SPEC.md, "Metric names"): fixed, as Prometheus sees them.
SPEC_METRICS = {
    "celery_tasks_received_total",
    "celery_tasks_succeeded_total",
    "celery_tasks_failed_total",
    "celery_tasks_retried_total",
    "celery_task_duration_seconds",
    "celery_queue_length",
    "celery_active_workers",
}
# Added beside them by the package (SPEC: "may be added beside these").
EXTRA_METRICS = {
    "celery_task_queue_wait_seconds",
    "celery_tasks_revoked_total",
    # The troubleshooting signals (README, Troubleshooting): otel_agensium/celery/metrics.py.
    "celery_task_time_limit_hits_total",
    "celery_task_exceptions_total",
    "celery_worker_process_resident_memory_bytes",
    "celery_worker_process_cpu_seconds_total",
    "celery_worker_process_memory_limit_bytes",
    # Beat, backlog and worker probes (issue 15): otel_agensium/celery/beat.py, queues.py, probe.py.
    "celery_beat_sends_total",
    "celery_beat_send_errors_total",
    "celery_beat_entry_last_sent_timestamp_seconds",
    "celery_beat_entry_due_timestamp_seconds",
    "celery_beat_entry_lag_seconds",
    "celery_beat_entry_next_due_timestamp_seconds",
    "celery_beat_next_tick_timestamp_seconds",
    "celery_worker_ready",
    "celery_worker_eta_tasks",
    "celery_queue_unacked",
    "celery_queue_eta_held",
    "celery_queue_oldest_message_age_seconds",
    "celery_queue_backlog",
    "celery_queue_consumer_concurrency",
    "celery_queue_load",
}
HISTOGRAMS = {"celery_task_duration_seconds", "celery_task_queue_wait_seconds"}

# Secrets compose must refuse to start without.
REQUIRED_SECRETS = {"GRAFANA_ADMIN_PASSWORD", "REDIS_PASSWORD", "FLOWER_BASIC_AUTH"}
# Services whose image cannot run a health check (FROM scratch: no shell, no client).
NO_HEALTHCHECK = {"collector"}

SEED_ALERTS = {
    "CeleryNoWorkers",
    "CeleryHighQueueDepth",
    "CeleryHighFailureRate",
    "CelerySlowTasks",
    "RedisDown",
    "RedisHighMemory",
}
PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "logs", "table"}


# ----------------------------------------------------------------------- loading
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def compose() -> dict:
    return load_yaml(COMPOSE)


@cache
def collector() -> dict:
    return load_yaml(COLLECTOR)


@cache
def datasources() -> list[dict]:
    return load_yaml(DATASOURCES)["datasources"]


def dashboards() -> list[tuple[str, dict]]:
    return [(path.name, json.loads(path.read_text())) for path in DASHBOARDS]


def compose_schema_path() -> Path:
    """../shared/schemas (beside the repo, in CI and sessions), else the committed copy."""
    shared = REPO.parent / "shared" / "schemas" / "compose-spec.json"
    return shared if shared.exists() else REPO / "tests" / "schemas" / "compose-spec.json"


def container_ports(service: dict) -> set[int]:
    """Ports a service listens on inside the compose network: `ports` (container side) and `expose`."""
    found = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            found.add(int(entry["target"]))
        else:
            found.add(int(str(entry).rsplit(":", 1)[-1].split("/")[0]))
    for entry in service.get("expose", []):
        found.add(int(str(entry).split("/")[0]))
    return found


def published_ports(service: dict) -> set[int]:
    return {int(str(entry).rsplit(":", 1)[-1].split("/")[0]) for entry in service.get("ports", [])}


def assert_reaches_compose_service(where: str, endpoint: str) -> None:
    """`endpoint` (URL or host:port) names a compose service and a port that service listens on."""
    parts = urlsplit(endpoint if "://" in endpoint else f"tcp://{endpoint}")
    services = compose()["services"]
    assert parts.hostname in services, f"{where}: {endpoint} names no compose service ({sorted(services)})"
    assert parts.port is not None, f"{where}: {endpoint} has no explicit port"
    ports = container_ports(services[parts.hostname])
    assert parts.port in ports, f"{where}: {parts.hostname} does not listen on {parts.port} (ports/expose: {ports})"


def bind_mounts(service: dict) -> Iterator[tuple[str, str]]:
    """(host path, container path) for every bind mount (short or long syntax)."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield volume["source"], volume["target"]
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/", "~")):
            yield source, target


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)


def require(binary: str, package: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"`{binary}` is not installed (Debian package `{package}`); CI installs it")


# ----------------------------------------------------------------------- compose
def test_compose_validates_against_the_compose_spec_schema():
    schema = json.loads(compose_schema_path().read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    assert "version" not in compose(), "the top-level `version:` key is obsolete"


def test_compose_runs_the_whole_stack():
    assert set(compose()["services"]) == {
        "collector",
        "prometheus",
        "alertmanager",
        "tempo",
        "loki",
        "grafana",
        "redis",
        "redis-exporter",
        "flower",
    }


def test_every_bind_mount_exists_in_the_repo():
    mounts = [
        (name, source, target)
        for name, service in compose()["services"].items()
        for source, target in bind_mounts(service)
    ]
    assert mounts
    for name, source, _target in mounts:
        assert source.startswith("./"), f"{name}: bind mount {source} is not relative to the repo"
        assert (REPO / source).exists(), f"{name}: {source} does not exist in the repo"


def test_configs_are_mounted_where_the_commands_read_them():
    services = compose()["services"]
    mounted = {name: dict((t, s) for s, t in bind_mounts(service)) for name, service in services.items()}
    assert mounted["collector"]["/etc/otelcol-contrib/config.yaml"] == "./collector/config.yaml"
    assert "--config=/etc/otelcol-contrib/config.yaml" in services["collector"]["command"]
    assert mounted["prometheus"]["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"
    # rule_files: alerts.yml resolves next to prometheus.yml.
    assert mounted["prometheus"]["/etc/prometheus/alerts.yml"] == "./alerts.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
    # Tempo's metrics generator remote-writes to Prometheus.
    assert "--web.enable-remote-write-receiver" in services["prometheus"]["command"]
    assert mounted["alertmanager"]["/etc/alertmanager/alertmanager.yml"] == "./alertmanager/alertmanager.yml"
    assert "-config.file=/etc/tempo/tempo.yaml" in services["tempo"]["command"]
    assert mounted["tempo"]["/etc/tempo/tempo.yaml"] == "./tempo/tempo.yaml"
    assert "-config.file=/etc/loki/loki.yaml" in services["loki"]["command"]
    assert mounted["loki"]["/etc/loki/loki.yaml"] == "./loki/loki.yaml"
    assert mounted["grafana"]["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider_paths = {p["options"]["path"] for p in load_yaml(DASHBOARD_PROVIDERS)["providers"]}
    assert provider_paths == {"/etc/grafana/dashboards"}
    assert mounted["grafana"]["/etc/grafana/dashboards"] == "./grafana/dashboards"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "grafana" / "dashboards" / Path(home).name).exists()


def test_every_image_is_pinned():
    for name, service in compose()["services"].items():
        image = service["image"]
        assert "${" not in image, f"{name}: the image tag comes from the environment: {image}"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"


def test_every_service_has_a_healthcheck_or_a_reason():
    for name, service in compose()["services"].items():
        if name in NO_HEALTHCHECK:
            assert "healthcheck" not in service
            continue
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), name
        assert check.get("timeout") and check.get("interval"), f"{name}: healthcheck without bounds"
    # The one without a check is documented in the compose file.
    assert "FROM scratch" in COMPOSE.read_text()


def test_dependencies_wait_for_health_only_where_there_is_one():
    services = compose()["services"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s missing healthcheck"


def test_distroless_images_check_health_with_their_own_binary():
    # Tempo 3 and Loki 3.7 images are distroless (no shell, no wget): their binaries'
    # -health flag GETs /ready on the port the config listens on.
    services = compose()["services"]
    for name, binary, config in (("tempo", "/tempo", TEMPO), ("loki", "/usr/bin/loki", LOKI)):
        test = services[name]["healthcheck"]["test"]
        assert test == ["CMD", binary, "-health"], f"{name}: {test}"
        assert load_yaml(config)["server"]["http_listen_port"] == {"tempo": 3200, "loki": 3100}[name]


def test_redis_runs_through_the_entrypoints_privilege_drop():
    # The image's entrypoint drops root (gosu/su-exec redis) only when the command
    # starts with `redis-server`, an option or a .conf file; `sh -c ...` skipped it.
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert isinstance(command, list), "a string command is run through a shell"
    assert command[0] == "redis-server" or command[0].startswith("-") or command[0].endswith(".conf"), command
    assert "sh" not in command and "-c" not in command, command
    assert "entrypoint" not in redis and "user" not in redis
    # Its settings come from a compose config mounted where the command reads them.
    mounts = {c["target"]: c["source"] for c in redis["configs"]}
    config_path = next(part for part in command if part.endswith(".conf"))
    content = compose()["configs"][mounts[config_path]]["content"]
    settings = dict(line.split(" ", 1) for line in content.strip().splitlines())
    assert settings["requirepass"].startswith("${REDIS_PASSWORD:?")
    assert settings["maxmemory-policy"] == "noeviction"
    assert settings["appendonly"] == "yes"
    # No password on any command line (`ps` shows those).
    assert not any("PASSWORD" in str(part) for part in command)


def strings_in(node: Any) -> Iterator[str]:
    """Every string in a parsed YAML/JSON document (keys and values): what the comments do not say."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings_in(key)
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)


def compose_variables() -> list[tuple[str, str]]:
    """(name, the whole ${...} expression) for every interpolation in compose.otel.yaml ($$ is a literal $)."""
    found = []
    for text in strings_in(compose()):
        text = text.replace("$$", "")
        found += [(m.group(1), m.group(0)) for m in re.finditer(r"\$\{(\w+)([^}]*)\}", text)]
    return found


def test_required_secrets_fail_closed():
    variables = compose_variables()
    names = {name for name, _ in variables}
    assert REQUIRED_SECRETS <= names
    for name, expression in variables:
        if name in REQUIRED_SECRETS:
            assert expression.startswith(f"${{{name}:?"), f"{expression}: a secret must be required (:?), no default"
        else:
            # Anything optional has a default, so it never interpolates to an empty password.
            assert re.match(rf"\$\{{{name}:-", expression), f"{expression} has neither :? nor :- "


def test_no_literal_passwords_in_compose():
    text = COMPOSE.read_text()
    assert "admin:password" not in text
    secret_key = re.compile(r"PASSWORD|SECRET|TOKEN|BASIC_AUTH|API_KEY", re.I)
    for name, service in compose()["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for key, value in environment.items():
            if secret_key.search(key):
                assert "${" in str(value), f"{name}: {key} is a literal value"
        for part in service.get("command") or []:
            assert not re.search(r"--requirepass\s+(?!\"?\$)", str(part)), f"{name}: literal --requirepass"
    # A URL with credentials only ever takes them from the environment.
    for match in re.finditer(r"://([^@/\s]*)@", text):
        assert "${" in match.group(1), f"credentials in a URL: {match.group(0)}"


def test_env_example_documents_every_variable_without_usable_secrets():
    lines = ENV_EXAMPLE.read_text().splitlines()
    documented: dict[str, str] = {}
    for line in lines:
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            documented[match.group(1)] = match.group(2).strip()
    for name, _ in compose_variables():
        assert name in documented, f".env.example does not document {name}"
    for name in REQUIRED_SECRETS:
        # Empty: a copied .env.example still refuses to start.
        assert documented[name] == "", f".env.example ships a value for {name}"
        assert f"\n{name}=" in "\n" + ENV_EXAMPLE.read_text(), f"{name} must be an uncommented, empty line"


# ----------------------------------------------------------------------- collector
def pipeline_components(kind: str) -> set[str]:
    return {c for p in collector()["service"]["pipelines"].values() for c in p.get(kind, [])}


def test_collector_pipelines_reference_defined_components_and_use_them_all():
    config = collector()
    for kind in ("receivers", "processors", "exporters"):
        defined = set(config.get(kind) or {})
        used = pipeline_components(kind)
        assert used <= defined, f"undefined {kind}: {used - defined}"
        assert defined <= used, f"{kind} defined but in no pipeline: {defined - used}"
    extensions = set(config.get("extensions") or {})
    assert set(config["service"].get("extensions", [])) == extensions
    assert "health_check" in extensions
    assert set(config["service"]["pipelines"]) == {"metrics", "traces", "logs"}


def test_collector_processors_are_memory_limiter_then_batch():
    for name, pipeline in collector()["service"]["pipelines"].items():
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter", name
        assert processors[-1] == "batch", name


def test_collector_receives_otlp_on_the_published_ports():
    protocols = collector()["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    published = published_ports(compose()["services"]["collector"])
    assert {4317, 4318} <= published
    health_port = int(collector()["extensions"]["health_check"]["endpoint"].rsplit(":", 1)[1])
    assert health_port in published


def test_collector_exporters_reach_compose_services():
    config = collector()
    pipelines = config["service"]["pipelines"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    # 0.161's names (otlp and otlphttp are deprecated aliases)
    assert [e.split("/")[0] for e in pipelines["traces"]["exporters"]] == ["otlp_grpc"]
    assert [e.split("/")[0] for e in pipelines["logs"]["exporters"]] == ["otlp_http"]
    for name, exporter in config["exporters"].items():
        if name == "prometheus":
            continue
        assert_reaches_compose_service(f"exporter {name}", exporter["endpoint"])
    traces = config["exporters"][pipelines["traces"]["exporters"][0]]
    assert urlsplit(f"tcp://{traces['endpoint']}").hostname == "tempo"
    assert traces["tls"]["insecure"] is True
    logs = config["exporters"][pipelines["logs"]["exporters"][0]]
    # Loki's native OTLP endpoint; the exporter appends /v1/logs.
    assert logs["endpoint"] == "http://loki:3100/otlp"
    # The Tempo receiver the traces go to, with its request size limit stated
    # (unset it is gRPC's 4 MiB).
    tempo_grpc = load_yaml(TEMPO)["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]
    assert tempo_grpc["endpoint"].rsplit(":", 1)[1] == traces["endpoint"].rsplit(":", 1)[1]
    assert tempo_grpc["max_recv_msg_size_mib"] >= 4


def test_collector_prometheus_exporter_keeps_exemplars_and_spec_names():
    exporter = collector()["exporters"]["prometheus"]
    assert exporter["enable_open_metrics"] is True
    assert exporter["translation_strategy"] == "UnderscoreEscapingWithSuffixes"
    assert exporter["without_scope_info"] is True
    assert not {"resource_to_telemetry_conversion", "resource_constant_labels"} & set(exporter)
    assert "namespace" not in exporter, "a namespace would prefix every SPEC name"
    port = int(exporter["endpoint"].rsplit(":", 1)[1])
    assert port in container_ports(compose()["services"]["collector"])
    jobs = {job["job_name"]: job for job in load_yaml(PROMETHEUS)["scrape_configs"]}
    assert jobs["otel-collector"]["static_configs"][0]["targets"] == [f"collector:{port}"]
    assert jobs["otel-collector"]["honor_labels"] is True


def test_collector_image_is_the_release_the_manifest_builds():
    # The tests run otelcol-agensium built from the manifest; compose runs the
    # contrib image of the same release, which reads the same config.
    image = compose()["services"]["collector"]["image"]
    repo, _, tag = image.rpartition(":")
    assert repo == "otel/opentelemetry-collector-contrib"
    assert tag == str(load_yaml(COLLECTOR_MANIFEST)["dist"]["version"])


def test_collector_config_is_written_for_the_release_the_manifest_builds():
    version = load_yaml(REPO / "collector" / "builder-config.yaml")["dist"]["version"]
    assert f"Written against Collector {version} " in COLLECTOR.read_text()


# ----------------------------------------------------------------------- prometheus, alertmanager
def test_promtool_check_config():
    require("promtool", "prometheus")
    result = run_tool("promtool", "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules():
    require("promtool", "prometheus")
    result = run_tool("promtool", "check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules():
    require("promtool", "prometheus")
    result = run_tool("promtool", "test", "rules", "tests/rules/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_amtool_check_config():
    require("amtool", "prometheus-alertmanager")
    result = run_tool("amtool", "check-config", "alertmanager/alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_targets_are_compose_services():
    config = load_yaml(PROMETHEUS)
    assert config["rule_files"] == ["alerts.yml"]
    for alertmanager in config["alerting"]["alertmanagers"]:
        for static in alertmanager["static_configs"]:
            for target in static["targets"]:
                assert_reaches_compose_service("alerting", target)
    jobs = set()
    for job in config["scrape_configs"]:
        jobs.add(job["job_name"])
        for static in job["static_configs"]:
            for target in static["targets"]:
                if target.startswith("localhost:"):
                    continue  # Prometheus itself
                assert_reaches_compose_service(f"scrape job {job['job_name']}", target)
    assert {"otel-collector", "redis-exporter"} <= jobs


def test_alertmanager_routes_every_alert_to_a_defined_receiver():
    config = load_yaml(ALERTMANAGER)
    receivers = {r["name"] for r in config["receivers"]}

    def walk(route: dict) -> Iterator[dict]:
        yield route
        for child in route.get("routes", []):
            yield from walk(child)

    for route in walk(config["route"]):
        if "receiver" in route:
            assert route["receiver"] in receivers
    alert_names = {name for name, _ in rules_promql(load_yaml(ALERTS))}
    for rule in config.get("inhibit_rules", []):
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            match = re.match(r'alertname(=~?)"(.*)"', matcher)
            if match:
                names = match.group(2).split("|") if match.group(1) == "=~" else [match.group(2)]
                assert set(names) <= alert_names, f"inhibit rule names unknown alerts: {matcher}"


# ----------------------------------------------------------------------- alerts
def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def test_alerts_are_the_seeds_and_actionable():
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert SEED_ALERTS <= set(names)
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]
        assert rule.get("for"), f"{rule['alert']} fires on a single evaluation"


def test_alerts_aggregate_across_worker_processes():
    rules = {rule["alert"]: " ".join(rule["expr"].split()) for rule in alert_rules()}
    # Quantiles from buckets summed by le (and the labels kept), never per process.
    assert "sum by (le, queue, task_name) (rate(celery_task_duration_seconds_bucket[5m]))" in rules["CelerySlowTasks"]
    # Failure rate over finished tasks, not over received ones.
    assert "celery_tasks_succeeded_total" in rules["CeleryHighFailureRate"]
    assert "received" not in rules["CeleryHighFailureRate"]
    assert "absent(celery_active_workers)" in rules["CeleryNoWorkers"]
    assert "redis_memory_max_bytes > 0" in rules["RedisHighMemory"]


def test_every_alert_is_unit_tested_firing_and_not_firing():
    fires: set[str] = set()
    silent: set[str] = set()
    for case in load_yaml(ALERTS_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names <= fires, f"never tested firing: {names - fires}"
    assert names <= silent, f"never tested not firing: {names - silent}"


# ----------------------------------------------------------------------- grafana
def test_datasources_have_fixed_uids_and_links_resolve():
    sources = {ds["uid"]: ds for ds in datasources()}
    assert {"prometheus", "tempo", "loki"} <= set(sources)
    assert sources["prometheus"]["type"] == "prometheus"
    assert sources["tempo"]["type"] == "tempo"
    assert sources["loki"]["type"] == "loki"
    assert sum(ds.get("isDefault", False) for ds in datasources()) == 1

    def references(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasourceUid":
                    yield value
                else:
                    yield from references(value)
        elif isinstance(node, list):
            for item in node:
                yield from references(item)

    for ds in datasources():
        assert_reaches_compose_service(f"datasource {ds['uid']}", ds["url"])
        for uid in references(ds.get("jsonData", {})):
            assert uid in sources, f"datasource {ds['uid']} links to unknown uid {uid}"


def test_drill_down_links_metrics_traces_and_logs():
    sources = {ds["uid"]: ds for ds in datasources()}
    exemplars = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    # The label the Collector's prometheus exporter gives exemplars.
    assert {"name": "trace_id", "datasourceUid": "tempo"}.items() <= exemplars[0].items()

    logs = sources["tempo"]["jsonData"]["tracesToLogsV2"]
    assert logs["datasourceUid"] == "loki"
    assert "trace_id=" in logs["query"] and "__span.traceId" in logs["query"]
    by_task = [
        ds["jsonData"]["tracesToLogsV2"]["query"]
        for ds in datasources()
        if ds["type"] == "tempo" and "tracesToLogsV2" in ds.get("jsonData", {})
    ]
    assert any('task_id="$${__span.tags["celery.task_id"]}"' in q for q in by_task)
    assert sources["tempo"]["jsonData"]["tracesToMetrics"]["datasourceUid"] == "prometheus"
    assert sources["tempo"]["jsonData"]["serviceMap"]["datasourceUid"] == "prometheus"

    derived = sources["loki"]["jsonData"]["derivedFields"]
    assert any(f["matcherRegex"] == "trace_id" and f["datasourceUid"] == "tempo" for f in derived)


def test_the_task_logs_link_carries_its_logql_where_loki_reads_it():
    # Grafana builds an internal derived-field link's query as {query: <url>,
    # queryType}; the Loki datasource reads `expr`. So no internal link may point
    # at a Loki datasource: the task_id link is an Explore URL with `expr` set.
    sources = {ds["uid"]: ds for ds in datasources()}
    loki_uids = {uid for uid, ds in sources.items() if ds["type"] == "loki"}
    derived = {f["name"]: f for f in sources["loki"]["jsonData"]["derivedFields"]}
    for field in derived.values():
        assert field.get("datasourceUid") not in loki_uids, f"derived field {field['name']} opens an empty Loki query"
    link = derived["task_id"]
    assert link["matcherType"] == "label" and link["matcherRegex"] == "task_id"
    parts = urlsplit(link["url"])
    assert parts.path == "/explore"
    panes = json.loads(parse_qs(parts.query)["panes"][0])
    (pane,) = panes.values()
    (loki_query,) = pane["queries"]
    assert loki_query["datasource"] == {"type": "loki", "uid": "loki"}
    assert loki_query["expr"] == '{service_name=~".+"} | task_id="$${__value.raw}"'
    assert "query" not in loki_query


def test_exemplar_trace_id_label_is_the_same_everywhere():
    # The Collector's prometheus exporter names it trace_id (otlptranslator's
    # ExemplarTraceIDKey); Tempo's span metrics default to traceID unless told.
    sources = {ds["uid"]: ds for ds in datasources()}
    names = {d["name"] for d in sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]}
    tempo_label = load_yaml(TEMPO)["overrides"]["defaults"]["metrics_generator"]["trace_id_label_name"]
    assert names == {"trace_id"} and tempo_label == "trace_id"


def test_grafana_link_variables_are_escaped_from_env_expansion():
    # Grafana expands $VAR/${VAR} in provisioning files; its own ${__...} must be written $${__...}.
    for text in strings_in(load_yaml(DATASOURCES)):
        for match in re.finditer(r"\$\{__", text):
            assert text[match.start() - 1 : match.start()] == "$", f"unescaped Grafana variable in: {text}"


def test_dashboards_are_bare_models_with_valid_panels():
    assert DASHBOARDS, "no dashboard in grafana/dashboards/"
    uids = set()
    for name, dashboard in dashboards():
        assert "dashboard" not in dashboard, f"{name} is wrapped in {{'dashboard': ...}}"
        assert isinstance(dashboard.get("panels"), list) and dashboard["panels"], name
        assert dashboard.get("uid") and dashboard.get("title"), name
        assert dashboard["uid"] not in uids
        uids.add(dashboard["uid"])
        panels = list(iter_panels(dashboard["panels"]))
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels:
            assert panel["type"] in PANEL_TYPES, f"{name}: panel {panel['id']} is a {panel['type']!r}"
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{name}: panel {panel['id']} overflows the grid"
            if panel["type"] != "row":
                assert panel.get("targets"), f"{name}: panel {panel['id']} has no query"


def test_dashboard_datasources_are_provisioned():
    provisioned = {ds["uid"]: ds["type"] for ds in datasources()}
    for name, dashboard in dashboards():
        for panel in iter_panels(dashboard["panels"]):
            if panel["type"] == "row":
                continue
            refs = [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]
            for ref in refs:
                assert provisioned.get(ref["uid"]) == ref["type"], f"{name}: panel {panel['id']} uses {ref}"
        for variable in dashboard["templating"]["list"]:
            ref = variable.get("datasource")
            if ref:
                assert provisioned.get(ref["uid"]) == ref["type"], f"{name}: variable {variable['name']} uses {ref}"
        # Datasources named inside data links (Explore URLs, percent-encoded JSON).
        for text in strings_in(dashboard):
            for uid in re.findall(r"%22uid%22%3A%22([^%]+)%22", text):
                assert uid in provisioned, f"{name}: a link uses unknown datasource uid {uid}"


def main_dashboard() -> dict:
    return next(d for name, d in dashboards() if name == "celery.json")


def test_dashboard_has_the_seed_panels_and_the_drill_down():
    dashboard = main_dashboard()
    panels = list(iter_panels(dashboard["panels"]))
    by_expr = [(p, t.get("expr") or t.get("query") or "") for p in panels for t in p.get("targets", [])]

    def panel_using(text: str, kind: str | None = None) -> dict:
        for panel, expr in by_expr:
            if text in expr and (kind is None or panel["type"] == kind):
                return panel
        raise AssertionError(f"no {kind or ''} panel queries {text!r}")

    # The seed's six, corrected.
    panel_using("sum by (task_name) (rate(celery_tasks_succeeded_total", "timeseries")
    p95 = panel_using(
        "histogram_quantile(0.95, sum by (le, task_name) (rate(celery_task_duration_seconds_bucket", "timeseries"
    )
    assert any(t.get("exemplar") for t in p95["targets"]), "p95 panel without exemplars"
    success = panel_using("celery_tasks_failed_total", "gauge")
    assert "received" not in json.dumps(success["targets"])
    panel_using("max by (queue) (celery_queue_length", "stat")
    panel_using("increase(celery_tasks_failed_total", "stat")
    panel_using("max by (queue) (celery_active_workers", "stat")
    # Beyond the seed.
    panel_using("celery_task_queue_wait_seconds_bucket", "timeseries")
    panel_using("redis_memory_used_bytes")
    panel_using("redis_connected_clients")
    panel_using("redis_commands_processed_total")
    logs = panel_using("task_id", "logs")
    assert "$task_id" in json.dumps(logs["targets"]) or "${task_id" in json.dumps(logs["targets"])
    table = panel_using("celery_task_duration_seconds_bucket", "table")
    assert "/explore" in json.dumps(table["fieldConfig"]) and "tempo" in json.dumps(table["fieldConfig"])
    panel_using("status = error", "table")

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"queue", "task_name", "task_id"} <= set(variables)
    assert variables["task_id"]["type"] == "textbox"
    for name in ("queue", "task_name"):
        assert "label_values(" in variables[name]["definition"]


def spec_names_in(text: str) -> set[str]:
    names = set(re.findall(r"\bcelery_[a-z_]+", text))
    return {
        re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in HISTOGRAMS else n
        for n in names
    }


def test_only_spec_metric_names_are_queried():
    known = SPEC_METRICS | EXTRA_METRICS
    for path in [ALERTS, DATASOURCES, *DASHBOARDS]:
        unknown = spec_names_in(path.read_text()) - known
        assert not unknown, f"{path.name} queries metrics the package does not export: {unknown}"
    used = set().union(*(spec_names_in(p.read_text()) for p in DASHBOARDS))
    assert SPEC_METRICS <= used, f"SPEC metrics on no dashboard: {SPEC_METRICS - used}"


# ----------------------------------------------------------------------- tempo, loki
def test_tempo_and_loki_configs_fit_the_stack():
    tempo = load_yaml(TEMPO)
    assert tempo["server"]["http_listen_port"] in container_ports(compose()["services"]["tempo"])
    for target in tempo["metrics_generator"]["storage"]["remote_write"]:
        assert_reaches_compose_service("tempo remote_write", target["url"])
        assert urlsplit(target["url"]).path == "/api/v1/write"
    assert set(tempo["overrides"]["defaults"]["metrics_generator"]["processors"]) >= {"service-graphs"}

    # Tempo 3 has no ingester or compactor; the keys 2.x used are refused (strict parsing).
    assert not {"ingester", "compactor", "ingester_client"} & set(tempo)
    assert "traces_storage" not in tempo["metrics_generator"]

    loki = load_yaml(LOKI)
    assert loki["server"]["http_listen_port"] in container_ports(compose()["services"]["loki"])
    # Traces and logs are kept equally long.
    assert tempo["backend_worker"]["compaction"]["block_retention"] == loki["limits_config"]["retention_period"]
    assert loki["limits_config"]["allow_structured_metadata"] is True
    schema = loki["schema_config"]["configs"][-1]
    assert (schema["store"], schema["schema"]) == ("tsdb", "v13"), "structured metadata needs tsdb + v13"


def test_loki_indexes_no_per_process_resource_attribute():
    # Loki's default OTLP index labels include service.instance.id, which the
    # package sets per process: each prefork child would be a new stream.
    labels = load_yaml(LOKI)["distributor"]["otlp_config"]["default_resource_attributes_as_index_labels"]
    assert "service.name" in labels
    assert not {"service.instance.id", "process.pid", "host.name"} & set(labels), labels
    assert len(labels) == len(set(labels))


# ----------------------------------------------------------------------- PromQL on a real Prometheus
def all_promql() -> list[tuple[str, str]]:
    found = [(f"alerts.yml {name}", expr) for name, expr in rules_promql(load_yaml(ALERTS))]
    for name, dashboard in dashboards():
        found += [(f"{name} {where}", expr) for where, expr in dashboard_promql(dashboard)]
    # Trace-to-metrics queries: Grafana fills ${__span.tags[...]} from the span.
    for ds in datasources():
        for item in ds.get("jsonData", {}).get("tracesToMetrics", {}).get("queries", []):
            expr = re.sub(r"\$\$\{__span\.tags\[[^\]]+\]\}", "tasks.example", item["query"])
            found.append((f"datasource {ds['uid']} {item['name']!r}", expr))
    return found


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    if prometheus_binary() is None:
        pytest.skip("`prometheus` is not installed (Debian package `prometheus`); CI installs it")
    with running_prometheus(tmp_path_factory.mktemp("prometheus")) as server:
        yield server


def test_every_promql_expression_runs_on_a_real_prometheus(prometheus):
    expressions = all_promql()
    assert len(expressions) > 30
    failures = []
    for where, expr in expressions:
        try:
            query(prometheus, expand_grafana_variables(expr))
        except Exception as exc:  # noqa: BLE001 - collect them all, report at once
            failures.append(f"{where}: {exc}")
    assert not failures, "\n".join(failures)


def test_the_promql_check_catches_errors(prometheus):
    with pytest.raises(Exception, match="parse error"):
        query(prometheus, "sum by (le) (rate(celery_task_duration_seconds_bucket[5m])")
    with pytest.raises(KeyError):
        expand_grafana_variables('celery_queue_length{queue=~"$no_such_variable"}')
