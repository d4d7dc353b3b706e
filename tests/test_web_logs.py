"""uvicorn's own log lines as JSON, with the README's ``--log-config`` (the JSON block it shows)."""

from __future__ import annotations

import json
import re

import httpx

from tests.procs import BIN, ROOT, Proc, free_port


def _readme_log_config() -> str:
    blocks = re.findall(r"```json\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (config,) = [b for b in blocks if '"uvicorn.access"' in b]
    return config


def test_uvicorn_lines_are_json_with_the_readme_log_config(tmp_path):
    config = tmp_path / "uvicorn-logging.json"
    config.write_text(_readme_log_config())
    port = free_port()
    web = Proc(
        [str(BIN / "python"), "-m", "uvicorn", "tests.apps.web_early:app", "--port", str(port)]
        + ["--host", "127.0.0.1", "--log-config", str(config)],
        env={"AGENSIUM_OTLP": "false", "OTEL_SERVICE_NAME": "web-logs"},
        name="uvicorn-json",
    )
    try:
        web.wait_for_line("Uvicorn running", timeout=60)
        trace_id = "7bf92f3577b34da6a3ce929d0e0e4736"
        response = httpx.get(
            f"http://127.0.0.1:{port}/items/5", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
        )
        assert response.status_code == 200
        web.wait_for_line('GET /items/5 HTTP/1.1\\" 200', timeout=30)
    finally:
        web.stop()
    lines = [line for line in web.lines if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON: nothing in uvicorn's text format
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert len(access) == 1 and access[0]["trace_id"] == trace_id, access
    assert {r["service"] for r in records} == {"web-logs"}
    assert any(r["logger"] == "uvicorn.error" and "Uvicorn running" in r["message"] for r in records)
