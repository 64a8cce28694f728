#!/usr/bin/env bash
# The main job, locally: starts a real kube-apiserver + etcd and a TLS-only ZooKeeper on loopback,
# installs the nodepool.dev CRDs, applies the examples and shows them with kubectl.
# The environment keeps running afterwards; stop it with `e2e/scripts/demo.sh down`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo"

if [ "${1:-}" = down ]; then
  cargo run -q --locked -p nodepool-e2e --bin nodepool-testenv -- down
  exit 0
fi

stage "install dependencies"
"$repo/e2e/scripts/install-deps.sh"

stage "build"
cargo build --locked -p nodepool-e2e --bin nodepool-testenv

stage "start the control plane and ZooKeeper"
env_json=$("$CARGO_TARGET_DIR/debug/nodepool-testenv" up)
echo "$env_json"
KUBECONFIG=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["kubeconfig"])' <<<"$env_json")
export KUBECONFIG

stage "install the CRDs and the examples"
kubectl apply -f crds/generated/
kubectl wait --for condition=Established --timeout=60s -f crds/generated/ >/dev/null
kubectl create namespace nodepool-demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n nodepool-demo -f examples/

stage "what is there"
kubectl get -n nodepool-demo nodepool
stage ""
cat <<MSG

The environment is still running. Use it with:
  export KUBECONFIG=$KUBECONFIG
Stop it with: e2e/scripts/demo.sh down
MSG
