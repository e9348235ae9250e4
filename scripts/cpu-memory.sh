#!/usr/bin/env bash
# What a CPU profile costs the release demo in memory: RssAnon and RssShmem from
# /proc/PID/status, sampled every 100 ms, before, during and after one CPU profile under
# load (a /work loop and wrk on /), then a second profile (warm symbol cache).
#
#   scripts/cpu-memory.sh [SECONDS]          # default 5; builds the release demo first
#
# Prints the samples as "t_ms anon_kib shmem_kib phase" and a summary: the baseline
# (median before the first profile), the peak during each profile, and the value 15 s
# after the last answer.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
cargo build --release -p demo -q
. scripts/lib.sh
read -r port dport < <(free_ports 2)
RUST_LOG=warn target/release/demo --listen 127.0.0.1:$port --diag-listen 127.0.0.1:$dport >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; kill $(jobs -p) 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
phase=idle
out=$(mktemp)
sampler() {
  local t0; t0=$(date +%s%N)
  while kill -0 $pid 2>/dev/null; do
    local p; p=$(cat "$out.phase" 2>/dev/null || echo idle)
    awk -v t=$(( ($(date +%s%N) - t0) / 1000000 )) -v p="$p" \
      '/^RssAnon/{a=$2} /^RssShmem/{s=$2} END{print t, a, s, p}' /proc/$pid/status
    sleep 0.1
  done >> "$out"
}
echo idle > "$out.phase"
sampler &
( while kill -0 $pid 2>/dev/null; do curl -s "http://127.0.0.1:$port/work?n=3000000" >/dev/null || true; done ) &
if command -v wrk >/dev/null; then wrk -t1 -c8 -d$((4 * seconds + 25))s "http://127.0.0.1:$port/" >/dev/null 2>&1 & fi
sleep 3
echo profile1 > "$out.phase"
curl -sf -o /dev/null "http://127.0.0.1:$dport/debug/pprof/profile?seconds=$seconds"
echo between > "$out.phase"; sleep 3
echo profile2 > "$out.phase"
curl -sf -o /dev/null "http://127.0.0.1:$dport/debug/pprof/profile?seconds=$seconds"
echo after > "$out.phase"; sleep 15
cat "$out"
base=$(awk '$4=="idle"{print $2+$3}' "$out" | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}')
awk -v base="$base" '
  $4=="profile1" && $2+$3>p1 {p1=$2+$3}
  $4=="profile2" && $2+$3>p2 {p2=$2+$3}
  $4=="after" {last=$2+$3}
  END {
    printf "anon+shmem KiB: baseline %d, peak in profile 1 %d (+%.1f MiB), peak in profile 2 %d (+%.1f MiB), 15 s after %d (+%.1f MiB)\n",
      base, p1, (p1-base)/1024, p2, (p2-base)/1024, last, (last-base)/1024
  }' "$out"
rm -f "$out" "$out.phase"
