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

if ! command -v go >/dev/null 2>&1; then
  echo "otel-agensium: building Prometheus $release needs Go >= 1.25 on PATH; the tests fall back to Debian's prometheus" >&2
  exit 2
fi

key=$( (echo "$module_version"; go version) | sha256sum | cut -c1-16)
cache=${OTELCOL_AGENSIUM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/otel-agensium}
dir="$cache/prometheus-$key"
binary="$dir/bin/prometheus"

if [ ! -x "$binary" ]; then
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  flock 9  # two test processes asking at once build once
  if [ ! -x "$binary" ]; then
    log="$dir/build.log"
    echo "otel-agensium: building Prometheus $release into $dir (several minutes, once)" >&2
    if ! GOBIN="$dir/bin" go install -ldflags "-X github.com/prometheus/common/version.Version=$release" \
        "github.com/prometheus/prometheus/cmd/prometheus@$module_version" >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      echo "otel-agensium: the Prometheus build failed; full log: $log" >&2
      exit 1
    fi
  fi
fi
echo "$binary"
