# Shared by the scripts in this folder: paths, stage timing, and the cargo target directory.
# shellcheck shell=bash
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache="${NODEPOOL_CACHE:-$HOME/.cache/nodepool-operator}"
export NODEPOOL_CACHE="$cache"
# Rust artifacts live outside the clone so a fresh clone on the same machine reuses them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
export PATH="$cache/tools/bin:$PATH"

stage_started=
stage_name=
stage() {  # stage NAME: ends the previous stage (printing its time) and starts NAME
  local now; now=$(date +%s)
  if [ -n "$stage_name" ]; then
    printf '==> %s took %ss\n' "$stage_name" "$((now - stage_started))" >&2
  fi
  stage_name=$1; stage_started=$now
  [ -n "$stage_name" ] && printf '\n==> %s\n' "$stage_name" >&2
  return 0
}
