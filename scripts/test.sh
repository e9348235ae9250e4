#!/usr/bin/env bash
# The one test command: every check and every test, on a fresh machine too.
# Installs what the tests drive for real (Debian's Go for `go tool pprof`, wrk,
# Chromium with playwright-core for the browser test, tmux and tokio-console, a C
# toolchain for jemalloc, kubernetes-validate and dockerfile from PyPI for the deployment
# checks; podman, runc and debootstrap for the container check; the aarch64 cross gcc and
# libc, qemu-user and rustup's aarch64 target for the aarch64 run) when missing, and prints
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
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
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
  step "cargo clippy (ring loom)" cargo clippy -q --manifest-path diag/loom/Cargo.toml \
    --target-dir target/loom --release --all-targets -- -D warnings
  step "cargo fmt --check (ring loom)" cargo fmt --manifest-path diag/loom/Cargo.toml --check
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
# Issue 16's shape: files <= 400 lines, functions <= 80, no axum/http/ApiError in a
# profile's domain part.
step "source shape" python3 scripts/check_shape.py
step "cargo test" cargo test --workspace --all-features

# The sample ring model-checked by loom (diag/loom: the ring's own source, built with loom's
# atomics and cell; two producers and the drain on rings of 2 and 3 slots). Then each
# deliberately weakened ring (a Release or Acquire made Relaxed, or unpublished slots
# read) must be reported by loom as a data race: the model still has teeth.
loom_ring() {
  local loom=(--release --manifest-path diag/loom/Cargo.toml --target-dir target/loom)
  cargo test -q "${loom[@]}" -- --nocapture
  local m log=target/loom/mutant.log
  for m in relaxed_publish relaxed_observe relaxed_free relaxed_check_free read_unpublished; do
    if DIAG_LOOM_MUTANT=$m cargo test -q "${loom[@]}" a_full_ring >"$log" 2>&1; then
      echo "the loom model passed with the ring weakened ($m): it no longer checks the ring" >&2
      return 1
    fi
    if ! grep -q "Causality violation" "$log"; then
      cat "$log" >&2
      echo "the weakened ring ($m) failed for another reason than the data race" >&2
      return 1
    fi
    echo "weakened ring ($m): loom reports $(grep -m1 -o 'Causality violation: [^.]*' "$log")"
  done
}
step "ring under loom" loom_ring

# diag's CPU engine cross-built for aarch64 (Debian's cross gcc and libc: jemalloc, a
# dev-dependency, is C) and run under qemu-user: the engine's unit tests (the ring's among
# them), and CPU profiles over HTTP that go tool pprof reads with the burning function in
# them. qemu-user passes timer_create with SIGEV_THREAD_ID through to the host kernel, so
# the per-thread CPU timers fire, but it is no faithful aarch64 machine, and five tests
# are filtered out by name (the reasons are printed below): two compare the samples with
# the process's CPU time from /proc/self/stat, whose CPU fields qemu-user reports as zero;
# three count samples against floors sized for native speed, which emulation on a shared
# machine missed. It also runs the guest with the host's (x86) memory ordering: the ring's
# orderings are checked by loom above, not here.
aarch64_engine() {
  need_deb aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
  need_deb /usr/aarch64-linux-gnu/lib/libc.so libc6-dev-arm64-cross
  need_deb qemu-aarch64 qemu-user
  rustup target list --installed | grep -qx aarch64-unknown-linux-gnu ||
    rustup target add aarch64-unknown-linux-gnu
  local arm=(-q -p diag --target aarch64-unknown-linux-gnu)
  local cpu_time=(sampled_cpu_time_matches_the_cpu_time_used cpu_time_stays_honest_above_the_kernel_tick)
  local counts=(folded_output_parses overlapping_profiles_share_the_sampler_and_each_gets_its_window
    a_sample_inside_write_names_its_rust_caller)
  local skip=() t
  for t in "${cpu_time[@]}" "${counts[@]}"; do skip+=(--skip "$t"); done
  (
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
    cargo test "${arm[@]}" --lib cpu::engine
    echo "skipped under qemu-aarch64: ${cpu_time[*]}: they compare the samples with the" \
      "process's CPU time read from /proc/self/stat, whose CPU fields qemu-user reports as" \
      "zero (\"the window's CPU 3.30 s, the whole request's 0.00 s\")"
    echo "skipped under qemu-aarch64: ${counts[*]}: their floors (> 50 and > 40 samples" \
      "in a 1 s window; 95 % of at least 20 samples) were sized for native speed; emulated on" \
      "a shared 2-core machine they got 44, 8 to 32, and 23 of 25 (docs/internals.md, aarch64);" \
      "their windows now last a fixed amount of CPU time, not yet run under qemu"
    cargo test "${arm[@]}" --test cpu -- "${skip[@]}"
  )
}
step "aarch64 engine under qemu" aarch64_engine
step "diag without features: the 501s" cargo test -q -p diag --no-default-features --test features
step "cargo bench --no-run" cargo bench --workspace --no-run
# The in-process heap-sampling A/B, a few rounds: it fails unless jemalloc's samples show
# in the active windows (about 1.56 a /churn request) and not in the inactive ones.
step "heap_ab (sampling switched)" cargo run --release -q -p benches --example heap_ab -- --rounds 20
build_unwinder_benches() { # one build per unwinder: their pprof-rs features exclude each other
  for features in "" frame-pointer framehop; do
    cargo bench -q --manifest-path benches/unwinders/Cargo.toml --target-dir target/unwinders \
      --bench sample_cost --no-run ${features:+--features $features}
  done
}
step "unwinder benches --no-run" build_unwinder_benches
step "overhead.py --quick" python3 scripts/overhead.py --quick
# The floods of issue 12 against the release demo overhead.py just built.
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
