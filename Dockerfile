# syntax=docker/dockerfile:1
# The demo as a container: build with the workspace's flags (.cargo/config.toml: frame
# pointers, tokio_unstable) and line tables, then a small non-root runtime image.
#   docker build -t demo:latest .
# Not built here (no container engine runs on the project's machines); checked by
# scripts/check_deploy.py. See docs/fleet.md.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Sources only; target/ and .git are in .dockerignore.
COPY . .
RUN cargo build --release --locked -p demo \
 && cp target/release/demo /demo

FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --user-group --no-create-home demo
COPY --from=build /demo /usr/local/bin/demo
USER 10001:10001
EXPOSE 8080 6060
ENTRYPOINT ["/usr/local/bin/demo"]
CMD ["--listen=0.0.0.0:8080", "--diag-listen=127.0.0.1:6060"]
