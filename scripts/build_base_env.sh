#!/usr/bin/env bash
# Builds (once) the heavy cached base environment for a pin set: called by setup_env.sh.
# The cache key hashes the requirement files and THIS script, so a change of either builds a new
# environment while an unchanged pin set is reused by every clone of the project.
# Usage: build_base_env.sh PYTHON HOST_CUDA(0|1) CACHE_DIR  -> prints the base environment path.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=$1 host_cuda=$2 cache=$3
log() { printf '[setup] %s\n' "$*" >&2; }
# pip prints a warning per package for the machine's file:// index mirrors that lack it; keep the noise out.
quiet() { "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

key=$( { cat requirements/base.txt requirements/nodeps.txt scripts/build_base_env.sh; "$py" --version; echo "host_cuda=$host_cuda"; } | sha256sum | cut -c1-16)
base="$cache/venv-$key"
mkdir -p "$cache"

exec 9>"$cache/.lock-$key"
flock 9
if [[ ! -f $base/.complete ]]; then
  t0=$(date +%s)
  log "building base environment $base (first time for this pin set; a few minutes)"
  rm -rf "$base"
  if ((host_cuda)); then
    # Keep the machine's own CUDA torch: inherit it and skip the torch lines of the pin set.
    "$py" -m venv --system-site-packages "$base"
    grep -vE '^(torch|torchvision|triton)==' requirements/base.txt >"$base.req"
  else
    "$py" -m venv "$base"
    cp requirements/base.txt "$base.req"
  fi
  quiet "$base/bin/python" -m pip install -q -r "$base.req"
  quiet "$base/bin/python" -m pip install -q --no-deps -r requirements/nodeps.txt
  rm -f "$base.req"
  touch "$base/.complete"
  log "base environment ready in $(( $(date +%s) - t0 )) s"
fi
flock -u 9
echo "$base"
