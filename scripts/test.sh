#!/usr/bin/env bash
# The one test command: every check and every test, on a fresh machine too.
# Installs what the tests drive for real (Debian's Go for `go tool pprof`, wrk,
# Chromium with playwright-core for the browser test, tmux and tokio-console, a C
# toolchain for jemalloc, kubernetes-validate and dockerfile from PyPI for the deployment
# checks; podman, runc and debootstrap for the container check) when missing, and prints
# how long each step took.
#
#   scripts/test.sh            everything
#   scripts/test.sh --no-lint  skip fmt, clippy and doc (a quicker loop while developing)
set -euo pipefail
cd "$(dirname "$0")/.."

lint=1
for arg in "$@"; do
  case "$arg" in
    --no-lint) lint=0 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

# A cold run builds every target once: incremental caches would only double the disk it
# takes (about 9 GB here), and a full disk is what broke a CI run once (jemalloc's build
# failed at 803 s). Set CARGO_INCREMENTAL=1 to keep them while iterating.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
free_gb=$(df -Pk . | awk 'NR==2 { printf "%d", $4 / 1048576 }')
if [ "$free_gb" -lt 25 ]; then
  echo "warning: ${free_gb} GB free on this disk; a cold run needs about 25 GB (target/)" >&2
fi

started=$(date +%s)
declare -a summary=()
step() {
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo
  echo "==> $name: $*"
  "$@"
  local took=$(( $(date +%s) - t0 ))
  echo "<== $name: ${took} s"
  summary+=("$(printf '%-28s %5d s' "$name" "$took")")
}

# as_root, need_deb
. scripts/lib.sh

install_tools() {
  # Seen once on a shared machine: /dev/null replaced by a regular file (tmux then fails
  # to start its server, and every `> /dev/null` fills a file). Put the device back.
  if [ ! -c /dev/null ]; then
    echo "warning: /dev/null is not a character device; recreating it" >&2
    as_root rm -f /dev/null && as_root mknod -m 666 /dev/null c 1 3
  fi
  need_deb cc gcc     # tikv-jemalloc-sys builds jemalloc from C
  need_deb make make
  need_deb go golang-go
  need_deb wrk wrk
  need_deb chromium chromium
  need_deb node nodejs
  need_deb tmux tmux    # the tokio-console test reads its screen through tmux
  need_deb dot graphviz # go tool pprof's web UI draws its graph view with it (the guide's check)
  need_deb redis-server redis-server  # demo/tests/redis.rs runs real Redis servers
  if ! command -v tokio-console >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/tokio-console" ]; then
    echo "installing tokio-console (cargo install, a few minutes once)"
    cargo install -q tokio-console --locked
  fi
  if [ ! -d target/browser/node_modules/playwright-core ]; then
    echo "installing playwright-core (drives chromium in the browser test)"
    mkdir -p target/browser
    npm install --silent --no-audit --no-fund --prefix target/browser playwright-core@1.65 >/dev/null
  fi
  # The deployment checks: Kubernetes schemas, BuildKit's Dockerfile parser, YAML.
  python3 -c 'import kubernetes_validate, dockerfile, yaml' 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check kubernetes-validate dockerfile pyyaml
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
  go version
}

step "install tools" install_tools
if [ $lint = 1 ]; then
  step "cargo fmt --check" cargo fmt --all --check
  step "cargo clippy" cargo clippy --workspace --all-targets --all-features -- -D warnings
  step "cargo clippy (unwinders)" cargo clippy -q --manifest-path benches/unwinders/Cargo.toml \
    --target-dir target/unwinders --all-targets -- -D warnings
  step "cargo fmt --check (unwinders)" cargo fmt --manifest-path benches/unwinders/Cargo.toml --check
  step "cargo doc" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features
  # The one switched-off state that needs its own build: diag without its CPU backend.
  step "diag without default features" cargo clippy -p diag --no-default-features -- -D warnings
  step "diag with heap only" cargo clippy -p diag --no-default-features --features heap -- -D warnings
  step "diag with console only" cargo clippy -p diag --no-default-features --features console -- -D warnings
  step "diag with taskdump only" cargo clippy -p diag --no-default-features --features taskdump -- -D warnings
  step "diag with trace only" cargo clippy -p diag --no-default-features --features trace -- -D warnings
  step "diag with criterion only" cargo clippy -p diag --no-default-features --features criterion -- -D warnings
fi
step "deployment files" python3 scripts/check_deploy.py
step "cargo test" cargo test --workspace --all-features
step "diag without features: the 501s" cargo test -q -p diag --no-default-features --test features
step "cargo bench --no-run" cargo bench --workspace --no-run
build_unwinder_benches() { # one build per unwinder: their pprof-rs features exclude each other
  for features in "" frame-pointer framehop; do
    cargo bench -q --manifest-path benches/unwinders/Cargo.toml --target-dir target/unwinders \
      --bench sample_cost --no-run ${features:+--features $features}
  done
}
step "unwinder benches --no-run" build_unwinder_benches
step "overhead.sh --quick" scripts/overhead.sh --quick
# The floods of issue 12 against the release demo overhead.sh just built.
step "soak.py --quick" python3 scripts/soak.py --quick
# After the release build and the bench build above, so the guide's cargo commands are quick.
step "the guide's commands" python3 scripts/check_guide.py
# The Dockerfile built and deploy/k8s/demo.yaml played with podman (installs podman, runc and
# debootstrap when missing; skips with a message only where podman cannot run containers).
step "containers (podman)" python3 scripts/check_containers.py

echo
echo "step                          time"
printf '%s\n' "${summary[@]}"
echo "all checks passed in $(( $(date +%s) - started )) s"
