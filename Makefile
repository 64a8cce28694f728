# The two entry points for a fresh machine (see README.md).
.PHONY: demo test crds
SHELL := /bin/bash

demo:
	e2e/scripts/demo.sh

test:
	e2e/scripts/test.sh

# Regenerates crds/generated/ and docs/reference/crds.md from the Rust types and the registry of
# drivers, and the Helm chart's copy of the CRDs.
crds:
	. e2e/scripts/lib.sh && cargo build --workspace --bins && "$$CARGO_TARGET_DIR/debug/nodepool-crdgen"
	cp crds/generated/*.yaml charts/nodepool-operator/crds/
