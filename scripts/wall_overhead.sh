#!/usr/bin/env bash
# What a wall-time profile (/debug/pprof/wall) costs the demo (docs/performance.md,
# "Wall-time profiles"):
#   part 1: with N traced tasks waiting (N connections each in /slow?ms=60000), the
#           demo's CPU over 10 s without a profile and with one at HZ; the cost of each
#           sample from the profile's own comment.
#   part 2: p99 latency and CPU per request of GET / under wrk -t1 -c32, A (no profile),
#           B (a wall profile at the default rate running: tasks and threads) and C (the
#           same with threads=0), alternated ROUNDS times in one run.
#   part 3: on an idle demo, the context switches per second of its threads and the
#           system calls interrupted (strace) with and without a profile: what the
#           threads' signals disturb.
# Usage: [NS="10 1000 10000"] scripts/wall_overhead.sh [BIN] [ROUNDS]   (BIN: a release demo)
set -euo pipefail
BIN=${1:-target/release/demo}
ROUNDS=${2:-6}
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
read -r PORT DPORT < <(free_ports 2)
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

echo "== part 2: p99 and CPU per request of GET / with and without a wall profile running ($ROUNDS rounds)"
# A: no profile; B: a wall profile at the default rate (tasks and threads); C: the same
# with threads=0 (tasks alone). CPU per request: the demo's CPU over the wrk run / requests.
start_demo
wrk -t1 -c32 -d2s "http://127.0.0.1:$PORT/" >/dev/null
run_wrk() {  # prints "p99 cpu_us_per_request"
    local c0 c1 out p99 n
    c0=$(cpu $PID)
    out=$(wrk -t1 -c32 -d3s --latency "http://127.0.0.1:$PORT/")
    c1=$(cpu $PID)
    p99=$(echo "$out" | awk '$1=="99%"{print $2}')
    n=$(echo "$out" | awk '/requests in/{print $1}')
    printf '%s %.1f' "$p99" "$(echo "($c1-$c0)*1000000/$TCK/$n" | bc -l)"
}
for r in $(seq "$ROUNDS"); do
    a=$(run_wrk)
    curl -s -o /dev/null "http://127.0.0.1:$DPORT/debug/pprof/wall?seconds=5" &
    CURL=$!
    sleep 0.3
    b=$(run_wrk)
    wait $CURL
    curl -s -o /dev/null "http://127.0.0.1:$DPORT/debug/pprof/wall?seconds=5&threads=0" &
    CURL=$!
    sleep 0.3
    c=$(run_wrk)
    wait $CURL
    echo "round $r p99/cpu_us_per_req A(none)=$a B(wall)=$b C(wall,threads=0)=$c"
done
kill $PID; wait $PID 2>/dev/null || true

echo "== part 3: what the thread signals disturb on an idle demo (10 s each)"
# Context switches of the demo's threads but diag's own (each signal to a parked worker
# wakes it), and interrupted system calls counted by strace over 5 s.
switches() {
    local t total=0
    for t in /proc/$PID/task/*; do
        case "$(cat "$t/comm" 2>/dev/null)" in diag-*) continue ;; esac
        total=$(( total + $(awk '/ctxt_switches/{s+=$2} END{print s+0}' "$t/status" 2>/dev/null || echo 0) ))
    done
    echo $total
}
start_demo
sleep 1
for mode in none threads=1 threads=0; do
    if [ "$mode" != none ]; then
        curl -s -o /tmp/wall.$$.pb "http://127.0.0.1:$DPORT/debug/pprof/wall?seconds=11&$mode" &
        CURL=$!
        sleep 0.5
    fi
    s0=$(switches); c0=$(cpu $PID); sleep 10; s1=$(switches); c1=$(cpu $PID)
    [ "$mode" != none ] && wait $CURL
    line=""
    [ "$mode" = threads=1 ] && line=$(go tool pprof -raw /tmp/wall.$$.pb 2>/dev/null | grep -m1 'diag wall-time profile' || true)
    printf 'idle %s: %s context switches/s, demo CPU %.0f ms/10 s\n  %s\n' "$mode" \
        "$(( (s1 - s0) / 10 ))" "$(echo "($c1-$c0)*1000/$TCK" | bc -l)" "$line"
done
if command -v strace >/dev/null; then
    for mode in none threads=1; do
        if [ "$mode" != none ]; then
            curl -s -o /dev/null "http://127.0.0.1:$DPORT/debug/pprof/wall?seconds=7" &
            CURL=$!
            sleep 0.5
        fi
        timeout -s INT 5 strace -f -qq -e trace=epoll_wait,epoll_pwait,futex,nanosleep,clock_nanosleep \
            -e signal=none -p $PID -o /tmp/strace.$$ 2>/dev/null || true
        [ "$mode" != none ] && wait $CURL
        printf 'idle %s: %s system calls in 5 s, %s interrupted (EINTR/ERESTART*)\n' "$mode" \
            "$(wc -l < /tmp/strace.$$)" "$(grep -cE 'EINTR|ERESTART' /tmp/strace.$$ || true)"
    done
    rm -f /tmp/strace.$$
fi
rm -f /tmp/wall.$$.pb
kill $PID; wait $PID 2>/dev/null || true
