"""`otelcol-agensium validate` (the real binary, built from collector/builder-config.yaml) on every
Collector config the repository ships, and on a copy with one misspelt key, so the check can fail."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.collector import SHIPPED_CONFIG, collector_binary, shipped_configs, validate

ENV_REFERENCE = re.compile(r"\$\{env:(\w+)\}")


def _env_for(text: str) -> dict[str, str]:
    """A value for every ``${env:NAME}`` without a default, as the Pod or compose would set it."""
    return {
        name: "http://127.0.0.1:9" if name.endswith(("_URL", "_ENDPOINT")) else "127.0.0.1"
        for name in ENV_REFERENCE.findall(text)
    }


def test_the_shipped_config_is_among_those_checked():
    assert SHIPPED_CONFIG in [path for path, _ in shipped_configs()]


@pytest.mark.parametrize("path,text", shipped_configs(), ids=lambda v: str(v) if isinstance(v, Path) else "")
def test_validate_accepts_every_shipped_config(path, text, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    done = validate(config, env=_env_for(text))
    assert done.returncode == 0, f"{path}:\n{done.stderr}"


def test_validate_rejects_one_misspelt_key(tmp_path):
    text = SHIPPED_CONFIG.read_text()
    assert text.count("send_batch_max_size:") == 1
    bad = tmp_path / "config.yaml"
    bad.write_text(text.replace("send_batch_max_size:", "send_batch_max_sise:"))
    done = validate(bad)
    assert done.returncode != 0
    assert "has invalid keys: send_batch_max_sise" in done.stderr


def test_every_exporter_uses_its_current_name():
    """0.161 renamed otlp -> otlp_grpc and otlphttp -> otlp_http; the old names only load as aliases."""
    listed = subprocess.run(
        [collector_binary(), "components"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    current = {exporter["name"] for exporter in yaml.safe_load(listed)["exporters"]}
    used = {name.split("/")[0] for name in yaml.safe_load(SHIPPED_CONFIG.read_text())["exporters"]}
    assert used <= current, used - current
