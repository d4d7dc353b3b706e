# shellcheck shell=bash
# Sourced by collector/build.sh and collector/build-prometheus.sh: build a binary once into a
# cache outside the repository (OTELCOL_AGENSIUM_CACHE, default ~/.cache/otel-agensium), keyed
# by a text and the Go version, and print its path.

# require_go MESSAGE: exit 2 with "otel-agensium: MESSAGE" on stderr unless Go >= 1.25 is on PATH.
require_go() {
  local version major minor
  if ! command -v go >/dev/null 2>&1; then
    echo "otel-agensium: $1" >&2
    exit 2
  fi
  version=$(go env GOVERSION 2>/dev/null || true)  # go1.26.8, go1.25rc1
  version=${version#go}
  major=${version%%.*}
  minor=${version#*.}
  minor=${minor%%[!0-9]*}
  major=${major%%[!0-9]*}
  if [ -z "$major" ] || [ -z "$minor" ] || [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 25 ]; }; then
    echo "otel-agensium: $1 (found go ${version:-of unknown version})" >&2
    exit 2
  fi
}

# cache_dir NAME < KEY-TEXT: the cache directory NAME-<hash of KEY-TEXT and `go version`>.
cache_dir() {
  local key
  key=$( (cat; go version) | sha256sum | cut -c1-16)
  echo "${OTELCOL_AGENSIUM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/otel-agensium}/$1-$key"
}

# build_once DIR BINARY BUILDING FAILED COMMAND...: unless BINARY is there, run COMMAND under a
# lock on DIR (two test processes asking at once build once), its output in DIR/build.log;
# BUILDING and FAILED are the stderr lines said before and on failure (with the log's tail).
# Prints BINARY; exits 1 if the build failed or left no BINARY.
build_once() {
  local dir=$1 binary=$2 building=$3 failed=$4
  shift 4
  if [ ! -x "$binary" ]; then
    mkdir -p "$dir"
    exec 9>"$dir/.lock"
    flock 9
    if [ ! -x "$binary" ]; then
      local log="$dir/build.log"
      echo "otel-agensium: $building" >&2
      if ! "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "otel-agensium: $failed; full log: $log" >&2
        exit 1
      fi
    fi
  fi
  [ -x "$binary" ] || { echo "otel-agensium: the builder finished but $binary is missing; see $dir/build.log" >&2; exit 1; }
  echo "$binary"
}
