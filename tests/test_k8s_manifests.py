"""deploy/kubernetes, offline: every rendered manifest decoded strictly into Kubernetes' and KEDA's
Go types (deploy/kubernetes/validate, a Go test: kustomize's library renders, k8s.io/api and
KEDA's apis decode), and the chart values files are what the charts read."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.procs import ROOT

K8S = ROOT / "deploy" / "kubernetes"


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is needed (as for collector/build.sh)")
def test_every_manifest_validates_against_the_api_types():
    # `go test` caches a passing run until a file it read changes: CI compiles once, then pays ~1 s.
    env = {**os.environ, "GOFLAGS": "-mod=mod"}
    done = subprocess.run(
        ["go", "test", "./..."], cwd=K8S / "validate", env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "ok" in done.stdout


def test_values_files_parse():
    for path in sorted((K8S / "helm").glob("*.yaml")):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path
