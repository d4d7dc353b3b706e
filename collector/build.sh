#!/usr/bin/env bash
# Build otelcol-agensium from collector/builder-config.yaml with the OpenTelemetry Collector
# Builder, once: the binary is cached outside the repository, keyed by the manifest's content
# and the Go version, and reused while neither changes. Prints the binary's path on stdout.
#
#   collector/build.sh            # build if needed, print the path
#   OTELCOL_AGENSIUM_CACHE=/dir   # where the cache lives (default ~/.cache/otel-agensium)
#
# Exit status: 0 built or cached; 2 Go is missing; 1 the build failed (its log is printed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
manifest="$here/builder-config.yaml"

if ! command -v go >/dev/null 2>&1; then
  echo "otel-agensium: building the Collector needs Go >= 1.25 on PATH (https://go.dev/dl/); or use the contrib image pinned in compose.otel.yaml" >&2
  exit 2
fi

# The builder's version is the manifest's dist.version (one Collector release for every module).
version=$(sed -n 's/^  version: *\([0-9.]*\).*/\1/p' "$manifest" | head -n 1)
key=$( (cat "$manifest"; go version) | sha256sum | cut -c1-16)
cache=${OTELCOL_AGENSIUM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/otel-agensium}
dir="$cache/otelcol-$key"
binary="$dir/_build/otelcol-agensium"

if [ ! -x "$binary" ]; then
  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  flock 9  # two test processes asking at once build once
  if [ ! -x "$binary" ]; then
    log="$dir/build.log"
    echo "otel-agensium: building otelcol-agensium $version into $dir (a few minutes, once)" >&2
    if ! GOBIN="$dir/bin" go install "go.opentelemetry.io/collector/cmd/builder@v$version" >"$log" 2>&1 \
      || ! (cd "$dir" && "$dir/bin/builder" --config "$manifest" >>"$log" 2>&1); then
      tail -n 40 "$log" >&2
      echo "otel-agensium: the Collector build failed; full log: $log" >&2
      exit 1
    fi
  fi
fi
[ -x "$binary" ] || { echo "otel-agensium: the builder finished but $binary is missing; see $dir/build.log" >&2; exit 1; }
echo "$binary"
