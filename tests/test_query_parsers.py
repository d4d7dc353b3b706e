"""Every LogQL and TraceQL string the stack ships, parsed by Grafana's own parsers.

The strings: Loki and Tempo panel queries of the dashboards, the TraceQL inside the
dashboards' Explore links, the datasources' trace-to-logs queries and the LogQL
inside the Loki derived field's Explore link. The parsers: `@grafana/lezer-logql`
and `@grafana/lezer-traceql` from npm (tests/js, pinned by its package-lock.json),
the grammars Grafana's query editors use, run by tests/js/parse.mjs on the machine's
Node.js (20 or newer; lezer-logql 0.4.2 declares node >= 24 for its own tooling, its
parser runs on 20). Grafana variables are replaced by the values Grafana would put
there first. PromQL is not here: tests/test_stack_files.py runs it on a real
Prometheus.

Needs `node` and `npm ci --prefix tests/js` (.ci/run does both); skips without them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.prom import expand_grafana_variables, iter_panels

REPO = Path(__file__).resolve().parent.parent
JS = REPO / "tests" / "js"
DATASOURCES = REPO / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))

# What Grafana puts in place of its link variables: a span's trace id, a span
# attribute, a derived field's value (a task id).
LINK_VALUES = {
    "__span.traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
    "__span.spanId": "00f067aa0ba902b7",
    "__value.raw": "d9c3b1e2-5f4a-4c1e-9a7b-2e6f0c8d1a3b",
}
_LINK_VARIABLE = re.compile(r"\$\{(__span\.tags\[\"[^\"]+\"\]|__span\.\w+|__value\.raw|__data\.fields\.\w+)\}")


def expand(query: str) -> str:
    """The query as Grafana runs it: link variables, then dashboard variables, filled in."""

    def link(match: re.Match) -> str:
        name = match.group(1)
        if name.startswith(("__span.tags", "__data.fields")):
            return "tasks.example"
        return LINK_VALUES[name]

    return expand_grafana_variables(_LINK_VARIABLE.sub(link, query))


def explore_queries(url: str) -> list[dict]:
    """The queries of a Grafana Explore link (/explore?panes=<JSON>, percent-encoded)."""
    panes = parse_qs(urlsplit(url).query)["panes"][0]
    return [query for pane in json.loads(panes).values() for query in pane["queries"]]


def provisioned_strings() -> list[dict]:
    """{lang, where, query} for every LogQL/TraceQL string, variables not yet expanded.

    In the datasources file `$$` is Grafana's escape for a literal `$`.
    """
    found = []
    for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]:
        data = ds.get("jsonData", {})
        logs = data.get("tracesToLogsV2")
        if logs and logs.get("customQuery"):
            found.append({"lang": "logql", "where": f"datasource {ds['uid']} tracesToLogsV2", "query": logs["query"]})
        for field in data.get("derivedFields", []):
            if field.get("url", "").startswith("/explore"):
                where = f"datasource {ds['uid']} derived field {field['name']}"
                for query in explore_queries(field["url"]):
                    found.append({"lang": "logql", "where": where, "query": query["expr"]})
    for item in found:
        item["query"] = item["query"].replace("$$", "$")
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in iter_panels(dashboard["panels"]):
            where = f"{path.name} panel {panel['id']} {panel.get('title')!r}"
            for target in panel.get("targets", []):
                kind = (target.get("datasource") or panel.get("datasource") or {}).get("type")
                if kind == "loki":
                    found.append({"lang": "logql", "where": where, "query": target["expr"]})
                elif kind == "tempo":
                    found.append({"lang": "traceql", "where": where, "query": target["query"]})
            for url in re.findall(r'"url": "(/explore\?[^"]+)"', json.dumps(panel.get("fieldConfig", {}))):
                for query in explore_queries(url):
                    lang = {"tempo": "traceql", "loki": "logql"}[query["datasource"]["type"]]
                    found.append({"lang": lang, "where": f"{where} link", "query": query.get("query") or query["expr"]})
    return found


def run_parsers(items: list[dict]) -> list[dict]:
    if shutil.which("node") is None:
        pytest.skip("`node` is not installed (Node.js 20+); CI has it")
    if not (JS / "node_modules" / "@grafana" / "lezer-logql").exists():
        pytest.skip("Grafana's parsers are not installed: run `npm ci --prefix tests/js` (.ci/run does)")
    result = subprocess.run(
        ["node", str(JS / "parse.mjs")], input=json.dumps(items), capture_output=True, text=True, cwd=JS, timeout=60
    )
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def failures(results: list[dict[str, Any]], items: list[dict]) -> list[str]:
    return [
        f"{r['where']} ({r['lang']}): {q['query']!r} near {[e['near'] for e in r['errors']]}"
        for r, q in zip(results, items, strict=True)
        if not r["ok"]
    ]


def test_every_logql_and_traceql_string_parses():
    items = [{**item, "query": expand(item["query"])} for item in provisioned_strings()]
    langs = {item["lang"] for item in items}
    assert langs == {"logql", "traceql"}, langs
    # The datasources' two trace-to-logs queries and the derived field, the
    # dashboard's Loki and Tempo panels and its Explore links.
    assert len(items) >= 9, [i["where"] for i in items]
    results = run_parsers(items)
    assert len(results) == len(items)
    assert not failures(results, items), "\n".join(failures(results, items))


def test_the_parsers_reject_broken_queries():
    broken = [
        # An unclosed stream selector, a filter without a value, a TraceQL
        # comparison without its right-hand side, an unclosed spanset.
        {"lang": "logql", "where": "unclosed selector", "query": '{service_name=~".+" | trace_id="abc"'},
        {"lang": "logql", "where": "filter without value", "query": '{service_name=~".+"} | task_id='},
        {"lang": "traceql", "where": "no right-hand side", "query": "{ span.celery.task_name = && status = error }"},
        {"lang": "traceql", "where": "unclosed spanset", "query": "{ status = error"},
    ]
    results = run_parsers(broken)
    assert [r["ok"] for r in results] == [False] * len(broken), results
    assert all(r["errors"] for r in results)
    # And a good query beside them still passes: the check tells them apart.
    good = run_parsers([{"lang": "logql", "where": "good", "query": '{service_name=~".+"} | trace_id="abc"'}])
    assert good[0]["ok"] is True, good


def test_the_related_logs_query_finds_every_service_by_trace_id():
    sources = {ds["uid"]: ds for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    query = sources["tempo"]["jsonData"]["tracesToLogsV2"]["query"]
    # All services: no selector on the clicked span's own service.name.
    assert "__span.tags" not in query, query
    assert query.startswith('{service_name=~".+"}'), query
    assert '| trace_id="$${__span.traceId}"' in query, query
