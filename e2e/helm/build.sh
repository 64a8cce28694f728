#!/usr/bin/env bash
# Builds helm from the Go modules pinned in go.mod/go.sum (helm.sh/helm/v3 v3.21.4) and caches the
# binary, keyed by a hash of those files, so only a fresh machine pays for the build (~1.5 min).
# Prints the path of the binary.
set -euo pipefail
cd "$(dirname "$0")"
key=$(sha256sum go.mod go.sum build.sh | sha256sum | cut -c1-16)
out="${NODEPOOL_CACHE:-$HOME/.cache/nodepool-operator}/helm-bin/${key}"
if [ ! -x "$out/helm" ]; then
  mkdir -p "$out.tmp"
  echo "building helm" >&2
  CGO_ENABLED=0 go build -mod=readonly -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v3.21.4" \
    -o "$out.tmp/helm" helm.sh/helm/v3/cmd/helm >&2
  rm -rf "$out" && mv "$out.tmp" "$out"
fi
echo "$out/helm"
