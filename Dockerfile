# syntax=docker/dockerfile:1
# The demo as a container: a release build with the workspace's flags (.cargo/config.toml:
# frame pointers, tokio_unstable) and line tables, then a small non-root runtime image
# that runs with a read-only root filesystem (only /tmp must be writable: pprof-rs and
# jemalloc's dump fallback write temporary files there).
#
#   docker build -t demo:latest .
#   docker run --read-only --tmpfs /tmp -p 8080:8080 demo:latest
#
# The base images are build arguments, so the same file builds where registries are out
# of reach: scripts/check_containers.py builds with podman from local images (a Debian
# base made with debootstrap, and a builder that is that base plus gcc, make and the
# host's Rust toolchain), mounts the host's cargo registry cache and sets CARGO_NET_OFFLINE
# when crates.io is unreachable from the build. See docs/fleet.md.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# "true" builds from the registry cache only (what the test sets when the build has no
# network); crates are checked against Cargo.lock's checksums either way.
ARG CARGO_NET_OFFLINE=false
WORKDIR /src
# Sources only; target/ and .git are in .dockerignore.
COPY . .
# target/ is a cache mount: a rebuild compiles only what changed, and the image gets the
# binary alone (copied out in the same step).
RUN --mount=type=cache,id=diag-demo-target,target=/src/target \
    cargo build --release --locked -p demo \
 && cp target/release/demo /demo

FROM ${RUNTIME_IMAGE} AS runtime
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin demo
COPY --from=build /demo /usr/local/bin/demo
USER 10001:10001
EXPOSE 8080 6060
ENTRYPOINT ["/usr/local/bin/demo"]
CMD ["--listen=0.0.0.0:8080", "--diag-listen=127.0.0.1:6060"]
