#!/usr/bin/env bash
# Build Prometheus 3 from its Go module, once, for the tests: the binary is cached outside the
# repository, keyed by the release and the Go version, and reused. Prints the binary's path.
#
#   collector/build-prometheus.sh   # build if needed, print the path
#
# Prometheus tags its Go module v0.3XX.Y for release v3.XX.Y: v0.316.0 is Prometheus 3.16.0
# (its VERSION file says so). `go install` builds the server without the web UI's assets (the
# API, scraping, rules and TSDB are all there; the tests use nothing else). About 7 CPU-minutes
# cold on 2 cores, plus the module downloads.
#
# Exit status: 0 built or cached; 2 Go is missing; 1 the build failed (its log is printed).
set -euo pipefail
release=3.16.0
module_version=v0.316.0

. "$(cd "$(dirname "$0")" && pwd)/_cache.sh"
require_go "building Prometheus $release needs Go >= 1.25 on PATH; the tests fall back to Debian's prometheus"

dir=$(echo "$module_version" | cache_dir prometheus)

build() {
  GOBIN="$dir/bin" go install -ldflags "-X github.com/prometheus/common/version.Version=$release" \
    "github.com/prometheus/prometheus/cmd/prometheus@$module_version"
}
build_once "$dir" "$dir/bin/prometheus" \
  "building Prometheus $release into $dir (several minutes, once)" "the Prometheus build failed" build
