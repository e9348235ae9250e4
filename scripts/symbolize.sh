#!/usr/bin/env bash
# Measures diag's symbolizer in the release demo, through /debug/pprof/symbol (the same
# symbolizer CPU and heap profiles use): anonymous memory (RssAnon + RssShmem) and time to
# resolve (1) the addresses of real profiles (a CPU and a heap profile under load) and (2) every function of the binary,
# each in a fresh process, cold (first pass) then warm (from the cache).
#
#   cargo build --release -p demo && scripts/symbolize.sh [DEMO_BINARY]
#
# Needs curl, wrk, nm and go (go tool pprof reads the profile's addresses).
set -euo pipefail
bin=$(realpath "${1:-target/release/demo}")
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_demo: sets PID, APP, DIAG.
start_demo() {
  APP=$(free_port); DIAG=$(free_port)
  "$bin" --listen "127.0.0.1:$APP" --diag-listen "127.0.0.1:$DIAG" >"$work/log.$DIAG" 2>&1 &
  PID=$!; pids+=("$PID")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$APP/healthz" >/dev/null && return; sleep 0.1; done
  echo "the demo did not start" >&2; exit 1
}
anon_kib() { awk '/^RssAnon:|^RssShmem:/{s+=$2} END{print s}' "/proc/$1/status"; }
# Median of 5 readings 100 ms apart, in KiB.
anon_settled() { for _ in 1 2 3 4 5; do anon_kib "$1"; sleep 0.1; done | sort -n | sed -n 3p; }
# The start of the program's first mapping (the load bias of a PIE) and of its code.
exe_base() { awk -v exe="$bin" '$6==exe && $3=="00000000"{split($1,a,"-"); print a[1]; exit}' "/proc/$1/maps"; }
text_start() { awk -v exe="$bin" '$6==exe && $2 ~ /x/{split($1,a,"-"); print a[1]; exit}' "/proc/$1/maps"; }

# post FILE: POSTs the addresses in FILE (one hex per line) in requests of 10,000 (the
# handler's cap); prints the total seconds and the number of names answered.
post() {
  local total=0 named=0
  split -l 10000 "$1" "$work/chunk."
  for c in "$work"/chunk.*; do
    paste -sd+ "$c" >"$work/body"
    t=$(curl -sS -o "$work/answer" -w '%{time_total}' --data-binary @"$work/body" \
      "http://127.0.0.1:$DIAG/debug/pprof/symbol")
    total=$(awk -v a="$total" -v b="$t" 'BEGIN{print a+b}')
    named=$((named + $(grep -c '^0x' "$work/answer" || true)))
  done
  rm -f "$work"/chunk.*
  echo "$total $named"
}

measure() { # LABEL FILE-OF-OFFSETS-FROM-BASE (hex) BASE-FUNCTION
  local label=$1 offsets=$2 basefn=$3
  start_demo
  sleep 1
  local base; base=$($basefn "$PID")
  python3 -c 'import sys; b=int(sys.argv[1],16); [print(hex(b+int(l,16))) for l in sys.stdin if l.strip()]' "$base" <"$offsets" >"$work/addrs"
  local before; before=$(anon_settled "$PID")
  read -r cold named < <(post "$work/addrs")
  sleep 1
  local after; after=$(anon_settled "$PID")
  read -r warm _ < <(post "$work/addrs")
  local after_warm; after_warm=$(anon_settled "$PID")
  sleep 15  # jemalloc returns dirty pages after ~10 s
  local idle; idle=$(anon_settled "$PID")
  printf '%-26s %6d addresses (%d named): anon %4.1f -> %4.1f MiB (+%.1f), after warm %4.1f, 15 s later %4.1f; cold %4.0f ms, warm %4.0f ms\n' \
    "$label" "$(wc -l <"$work/addrs")" "$named" "$(echo "$before/1024" | bc -l)" "$(echo "$after/1024" | bc -l)" \
    "$(echo "($after-$before)/1024" | bc -l)" "$(echo "$after_warm/1024" | bc -l)" "$(echo "$idle/1024" | bc -l)" \
    "$(echo "$cold*1000" | bc -l)" "$(echo "$warm*1000" | bc -l)"
  kill "$PID"; wait "$PID" 2>/dev/null || true
}

# 1. Real profiles: 20 s of CPU at 499 Hz under mixed load (wrk on / and /metrics, loops
#    on /work and /churn, heap profiles).
start_demo
load=$((SECONDS + 22))
( while [ $SECONDS -lt $load ]; do curl -s "http://127.0.0.1:$APP/work?ms=50" >/dev/null; done ) &
pids+=($!)
( while [ $SECONDS -lt $load ]; do curl -s "http://127.0.0.1:$APP/churn" >/dev/null; curl -s -o "$work/heap.pb.gz" "http://127.0.0.1:$DIAG/debug/pprof/heap"; done ) &
pids+=($!)
wrk -t1 -c8 -d22s "http://127.0.0.1:$APP/" >/dev/null &
pids+=($!)
wrk -t1 -c2 -d22s "http://127.0.0.1:$APP/metrics" >/dev/null &
pids+=($!)
curl -sS -o "$work/cpu.pb.gz" "http://127.0.0.1:$DIAG/debug/pprof/profile?seconds=20&frequency=499"
wait "${pids[-1]}" || true
start=$(text_start "$PID")
kill "$PID"; wait "$PID" 2>/dev/null || true
# Location addresses in the program (both profiles), as offsets from the start of its code.
for p in cpu heap; do go tool pprof -raw "$work/$p.pb.gz" 2>/dev/null; done |
  awk '/^Locations/{on=1; next} /^Mappings/{on=0} on && $2 ~ /^0x/ && $3=="M=1" {print $2}' |
  sort -u | python3 -c 'import sys; s=int(sys.argv[1],16); [print("%x" % (int(l,16)-s)) for l in sys.stdin if l.strip()]' "$start" >"$work/profile.offsets"
measure "a CPU + a heap profile" "$work/profile.offsets" text_start

# 2. Every function of the binary (its symbol table's code symbols).
nm --defined-only "$bin" | awk '$2 ~ /^[tTwW]$/ {print $1}' | sort -u >"$work/functions.offsets"
measure "every function" "$work/functions.offsets" exe_base
