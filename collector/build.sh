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

. "$here/_cache.sh"
require_go "building the Collector needs Go >= 1.25 on PATH (https://go.dev/dl/); or use the contrib image pinned in compose.otel.yaml"

# The builder's version is the manifest's dist.version (one Collector release for every module).
version=$(sed -n 's/^  version: *\([0-9.]*\).*/\1/p' "$manifest" | head -n 1)
dir=$(cache_dir otelcol <"$manifest")

build() {
  GOBIN="$dir/bin" go install "go.opentelemetry.io/collector/cmd/builder@v$version" \
    && (cd "$dir" && "$dir/bin/builder" --config "$manifest")
}
build_once "$dir" "$dir/_build/otelcol-agensium" \
  "building otelcol-agensium $version into $dir (a few minutes, once)" "the Collector build failed" build
