#!/usr/bin/env bash
# The main job, locally: a real kube-apiserver + etcd and a TLS-only ZooKeeper on loopback, the
# nodepool.dev CRDs and examples, nodepool-operator and nodepool-zk-bridge, a static provider on a
# local sshd, and Zuul's own client getting a node, using it and returning it.
# The control plane keeps running afterwards; stop it with `e2e/scripts/demo.sh down`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$repo"

if [ "${1:-}" = down ]; then
  cargo build -q --locked --workspace --bins && "$CARGO_TARGET_DIR/debug/nodepool-testenv" down
  exit 0
fi

stage "install dependencies"
"$repo/e2e/scripts/install-deps.sh"

stage "build"
cargo build --locked --workspace --bins

stage "start the control plane and ZooKeeper"
env_json=$("$CARGO_TARGET_DIR/debug/nodepool-testenv" up)
echo "$env_json"
KUBECONFIG=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["kubeconfig"])' <<<"$env_json")
export KUBECONFIG

stage "install the CRDs and the examples"
kubectl apply -f crds/generated/
kubectl wait --for condition=Established --timeout=60s -f crds/generated/ >/dev/null
kubectl create namespace nodepool-examples --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n nodepool-examples -f examples/
kubectl get -n nodepool-examples nodepool

stage "operator + bridge + static provider + a Zuul request"
"$CARGO_TARGET_DIR/debug/nodepool-demo"
stage ""
cat <<MSG

Use the control plane with:
  export KUBECONFIG=$KUBECONFIG
Stop it with: e2e/scripts/demo.sh down
MSG
