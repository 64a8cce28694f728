# The two entry points for a fresh machine (see README.md).
.PHONY: demo test crds

demo:
	e2e/scripts/demo.sh

test:
	e2e/scripts/test.sh

# Regenerates crds/generated/ from the Rust types, and the Helm chart's copy of them.
crds:
	cargo run -p nodepool-crds --bin nodepool-crdgen
	cp crds/generated/*.yaml charts/nodepool-operator/crds/
