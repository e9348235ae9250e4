#!/usr/bin/env bash
# What a wall-time profile (/debug/pprof/wall) costs the demo (docs/performance.md,
# "Wall-time profiles"):
#   part 1: with N traced tasks waiting (N connections each in /slow?ms=60000), the
#           demo's CPU over 10 s without a profile and with one at HZ; the cost of each
#           sample from the profile's own comment.
#   part 2: p99 latency of GET / under wrk -t1 -c32, A (no profile) and B (a wall
#           profile at the default rate running), alternated ROUNDS times in one run.
# Usage: [NS="10 1000 10000"] scripts/wall_overhead.sh [BIN] [ROUNDS]   (BIN: a release demo)
set -euo pipefail
BIN=${1:-target/release/demo}
ROUNDS=${2:-6}
PORT=18381
DPORT=18382
ulimit -n "$(ulimit -Hn)"   # 10,000 connections need more than 1,024
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }

start_demo() {
    RUST_LOG=warn "$BIN" --listen 127.0.0.1:$PORT --max-connections 12000 --diag-listen 127.0.0.1:$DPORT >/dev/null 2>&1 &
    PID=$!
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
}

echo "== part 1: per-sample cost by traced tasks"
for N in ${NS:-10 1000 10000}; do
    start_demo
    T=$(( N < 2 ? 1 : 2 ))
    wrk -t$T -c$N -d200s --timeout 200s "http://127.0.0.1:$PORT/slow?ms=60000" >/dev/null 2>&1 &
    WRK=$!
    sleep $(( N / 2000 + 3 ))
    for HZ in 20 100; do
        c0=$(cpu $PID); sleep 10; c1=$(cpu $PID)
        idle=$(echo "($c1-$c0)*1000/$TCK" | bc -l)
        c0=$(cpu $PID)
        comment=$(curl -s -D - -o /tmp/wall.$$.pb "http://127.0.0.1:$DPORT/debug/pprof/wall?seconds=10&hz=$HZ" | tr -d '\r' | grep -i '^x-diag' | tr '\n' ' ')
        c1=$(cpu $PID)
        prof=$(echo "($c1-$c0)*1000/$TCK" | bc -l)
        line=$(go tool pprof -raw /tmp/wall.$$.pb 2>/dev/null | grep -m1 'diag wall-time profile' || true)
        printf 'tasks=%s hz=%s cpu_ms_10s_without=%.0f cpu_ms_10s_with=%.0f headers: %s\n  %s\n' \
            "$N" "$HZ" "$idle" "$prof" "$comment" "$line"
    done
    kill $WRK 2>/dev/null || true
    kill $PID; wait $PID 2>/dev/null || true
    sleep 1
done
rm -f /tmp/wall.$$.pb

echo "== part 2: p99 of GET / with and without a wall profile running ($ROUNDS rounds)"
start_demo
wrk -t1 -c32 -d2s "http://127.0.0.1:$PORT/" >/dev/null
for r in $(seq "$ROUNDS"); do
    a=$(wrk -t1 -c32 -d3s --latency "http://127.0.0.1:$PORT/" | awk '$1=="99%"{print $2}')
    curl -s -o /dev/null "http://127.0.0.1:$DPORT/debug/pprof/wall?seconds=5" &
    CURL=$!
    sleep 0.3
    b=$(wrk -t1 -c32 -d3s --latency "http://127.0.0.1:$PORT/" | awk '$1=="99%"{print $2}')
    wait $CURL
    echo "round $r p99 A=$a B=$b"
done
kill $PID; wait $PID 2>/dev/null || true
