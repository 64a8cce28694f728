# syntax=docker/dockerfile:1.7
#
# One image with both binaries: /usr/local/bin/nodepool-operator and
# /usr/local/bin/nodepool-zk-bridge. The Helm chart (charts/nodepool-operator) picks one with the
# container's `command`; without one the image runs the operator.
#
#   docker build -t nodepool-operator:0.1.0 .
#   docker run --rm nodepool-operator:0.1.0 nodepool-zk-bridge --help
#
# The runtime image is Debian slim rather than distroless because the static driver (and the
# cloud drivers' host-key scan after boot) run OpenSSH's `ssh-keyscan` as a child process
# (drivers/static/src/lib.rs), so the image needs openssh-client. It runs as the unprivileged
# user 65532 and works with a read-only root filesystem (the chart mounts an emptyDir at /tmp).

# Rust: the toolchain the workspace is tested with (workspace rust-version: 1.89).
ARG RUST_VERSION=1.95
# The builder and the runtime share one Debian release, so the binaries' glibc matches.
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
# cmake: a fallback build path of aws-lc-sys (the crypto of kube, rustls and the cloud SDKs).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace (see .dockerignore): Cargo loads every member's manifest even when
# building two packages.
COPY . .
# Cache mounts keep the crates.io registry, git checkouts and build artefacts between builds;
# the target directory lives only in the cache, so the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,id=nodepool-operator-target,sharing=locked \
    cargo build --release --locked -p nodepool-operator -p nodepool-zk-bridge -p nodepool-cli \
 && install -D -m 0755 -t /out target/release/nodepool-operator target/release/nodepool-zk-bridge \
      target/release/nodepool target/release/kubectl-nodepool

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# openssh-client: ssh-keyscan for host keys; ca-certificates: the cloud APIs' TLS roots
# (rustls-native-certs reads /etc/ssl/certs). The user 65532 matches the chart's runAsUser.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home \
      --shell /usr/sbin/nologin nonroot
COPY --from=builder /out/ /usr/local/bin/
LABEL org.opencontainers.image.title="nodepool-operator" \
      org.opencontainers.image.description="Zuul's Nodepool as a Kubernetes operator: nodepool-operator, nodepool-zk-bridge and the nodepool command" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
WORKDIR /home/nonroot
# /metrics, /healthz, /readyz (--http-address, default 0.0.0.0:8080).
EXPOSE 8080
CMD ["nodepool-operator"]
