#!/usr/bin/env bash
# What a running CPU profile costs the demo, and how faithful it is, measured side by side
# with Go's net/http/pprof (../shared/peers/go-counter) in the same run.
#
#   scripts/overhead.sh            the full run (about 20 minutes; progress is printed)
#   scripts/overhead.sh --quick    a few seconds per part: proves the script works end to end
#   scripts/overhead.sh --rounds N N alternations per overhead pair instead of 10
#   scripts/overhead.sh --parts "5 6"  only these parts (0 1 2 3 5 6 7 8; 3 covers 4)
#
# Measures, printing a summary at the end (docs/performance.md quotes it):
#  0. what diag costs while nobody profiles: the server's CPU time per request under wrk
#     with diag mounted on the service's own listener and its trace layer installed (B,
#     `--diag-listen main`) against no diag at all (A, `--diag-listen off
#     --no-trace-layer`), two processes of the same binary, alternated;
#  1. overhead: the server's CPU time per request (from /proc/PID/stat) under wrk on `/`
#     and on fixed-work `/work?n=`, with a CPU profile running (B) against none (A),
#     alternating A and B; the median of the per-pair ratios B/A, with min and max, and
#     throughput beside it; for the demo and for Go;
#  2. fidelity: sampled CPU time (go tool pprof's "Total samples") over the CPU time the
#     process used in the same window, at 99 Hz (Go: 100 Hz), under wrk on `/` plus 1, 2
#     and 4 concurrent `/work` loops;
#  3. the time from the end of the window to the last byte of the answer, cold (first
#     profile of the process) and warm;
#  4. resident memory before the first profile, after it, and after many back-to-back ones;
#  5. what jemalloc heap profiling costs: the same CPU per request, on `/`, `/work?n=` and
#     the allocation-heavy `/churn`, with profiling active (B, the demo's default) against
#     inactive (A, `_RJEM_MALLOC_CONF=prof_active:false`): two processes of the same
#     binary, alternated; and how long a heap dump takes and how big it is, 64 MiB held;
#  6. what diag's trace layer costs while no /trace window is open: the same CPU per
#     request with the layer installed and idle (B) against without it (A,
#     `--no-trace-layer`), two processes of the same binary, alternated;
#  7. what an open /trace window costs: the same CPU per request while a window spans the
#     wrk run (B) against none (A), in one process, alternated;
#  8. what diag's RouteLabels layer costs: the same CPU per request on `/` with the layer
#     (B, the demo's default) against without it (A, `--no-route-labels`), two processes
#     of the same binary, alternated.
# Traffic goes to 127.0.0.1 only, bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
rounds_arg=""
parts="0 1 2 3 5 6 7 8"
while [ $# -gt 0 ]; do
  arg=$1; shift
  case "$arg" in
    --quick) quick=1 ;;
    --rounds) rounds_arg=${1:?--rounds needs a number}; shift ;;
    --parts) parts=${1:?--parts needs a list such as "5 6"}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

if [ $quick = 1 ]; then
  rounds=2; run_s=1; fid_s=2; fid_loads="1"; b2b=3; dumps=3
else
  rounds=10; run_s=3; fid_s=6; fid_loads="1 2 4"; b2b=20; dumps=20
fi
rounds=${rounds_arg:-$rounds}
want() { case " $parts " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
work_n=100000
demo_port=18080; demo_diag=16060; go_port=17070
tck=$(getconf CLK_TCK)
out=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# wrk and Go come from Debian's packages, installed here when missing (as scripts/test.sh does).
. scripts/lib.sh
need_deb wrk wrk
need_deb go golang-go
need_deb curl curl
need_deb python3 python3
peer=../shared/peers/go-counter
[ -d "$peer" ] || { echo "the Go peer is missing at $peer" >&2; exit 1; }

# Rough minutes per part at 10 rounds of 3 s (part 2 and 3 do not depend on rounds).
estimate=$(python3 -c "
per = {'0': 2.2, '1': 4.5, '2': 1.2, '3': 2.0, '5': 3.5, '6': 2.2, '7': 3.0, '8': 1.2}
fixed = {'2', '3'}
total = sum(per[p] * (1 if p in fixed else $rounds / 10) * ($run_s / 3 if p not in fixed else 1)
            for p in '$parts'.split() if p in per)
print(max(1, round(total)))")
echo "parts $parts, $rounds rounds: about $estimate minutes after the build; progress below."
echo "building the demo (release) and the Go peer..."
cargo build --release -q -p demo
(cd "$peer" && GOFLAGS=-mod=mod go build -o "$OLDPWD/target/go-counter" .)

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss() { awk '/^RssAnon/{a=$2} /^RssFile/{f=$2} END{printf "%d MiB (%d anonymous + %d file-backed)", (a+f)/1024, a/1024, f/1024}' "/proc/$1/status"; }
wait_http() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; exit 1; }

start_demo() { # [PORT DIAG_PORT|main|off [MALLOC_CONF [FLAG...]]]
  local port=${1:-$demo_port} diag=${2:-$demo_diag} conf=${3:-}
  shift $(( $# < 3 ? $# : 3 ))
  case $diag in main|off) ;; *) diag=127.0.0.1:$diag ;; esac
  _RJEM_MALLOC_CONF=$conf RUST_LOG=warn target/release/demo --listen 127.0.0.1:$port --diag-listen $diag "$@" >/dev/null 2>&1 &
  demo_pid=$!; pids+=($demo_pid)
  wait_http "http://127.0.0.1:$port/healthz"
  kill -0 $demo_pid 2>/dev/null || { echo "the demo exited: is port $port or $diag taken?" >&2; exit 1; }
}
start_go() {
  target/go-counter -addr 127.0.0.1:$go_port >/dev/null 2>&1 &
  go_pid=$!; pids+=($go_pid)
  wait_http "http://127.0.0.1:$go_port/"
  kill -0 $go_pid 2>/dev/null || { echo "the Go peer exited: is port $go_port taken?" >&2; exit 1; }
}

# One wrk run against URL while PID's CPU is measured: prints "us_per_request requests_per_s".
measure() {
  local pid=$1 url=$2
  local c0 c1 n
  c0=$(cpu_ticks "$pid")
  n=$(wrk -t1 -c32 -d"${run_s}s" "$url" | awk '/requests in/{print $1}')
  c1=$(cpu_ticks "$pid")
  python3 -c "print(f'{($c1-$c0)*1e6/$tck/max($n,1):.3f} {$n/$run_s:.0f}')"
}

# Overhead: alternate A (idle) and B (a profile spanning the wrk run).
overhead() {
  local name=$1 pid=$2 url=$3 profile_url=$4
  local file="$out/overhead-${name//[\/ ?=]/_}"
  echo "$name" > "$file.name"
  : > "$file"
  for r in $(seq "$rounds"); do
    a=$(measure "$pid" "$url")
    curl -s -o /dev/null "$profile_url" & local prof=$!
    sleep 0.5
    b=$(measure "$pid" "$url")
    wait $prof
    echo "$a $b" >> "$file"
    printf '  %-26s round %2d/%d: A %s us/req, B %s us/req\n' "$name" "$r" "$rounds" "${a%% *}" "${b%% *}"
  done
}

# Two processes, A (pid_a/port_a) and B (pid_b/port_b), on PATH: each round measures both,
# A first in odd rounds and B first in even ones, so that whatever favours the first (or
# second) run of a round falls on each side equally.
heap_pair() { # NAME PATH
  local name=$1 path=$2
  local file="$out/overhead-${name//[\/ ?=&]/_}"
  echo "$name" > "$file.name"
  : > "$file"
  for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then
      a=$(measure $pid_a "http://127.0.0.1:$port_a$path")
      b=$(measure $pid_b "http://127.0.0.1:$port_b$path")
    else
      b=$(measure $pid_b "http://127.0.0.1:$port_b$path")
      a=$(measure $pid_a "http://127.0.0.1:$port_a$path")
    fi
    echo "$a $b" >> "$file"
    printf '  %-26s round %2d/%d: A %s us/req, B %s us/req\n' "$name" "$r" "$rounds" "${a%% *}" "${b%% *}"
  done
}

if want 0; then
echo; echo "== 0. diag mounted on the service's listener and idle (B) against no diag at all (A), $rounds alternations"
start_demo 18086 off "" --no-trace-layer; pid_a=$demo_pid; port_a=18086
start_demo 18087 main; pid_b=$demo_pid; port_b=18087
heap_pair "diag-idle demo /" "/"
heap_pair "diag-idle demo /work?n=$work_n" "/work?n=$work_n"
kill $pid_a $pid_b; wait $pid_a $pid_b 2>/dev/null || true
fi

if want 1 || want 2; then
start_demo; start_go
fi
if want 1; then
echo; echo "== 1. overhead of a running CPU profile ($rounds alternations of ${run_s}s wrk runs)"
prof_s=$((run_s + 2))
overhead "demo /" $demo_pid "http://127.0.0.1:$demo_port/" "http://127.0.0.1:$demo_diag/debug/pprof/profile?seconds=$prof_s"
overhead "demo /work?n=$work_n" $demo_pid "http://127.0.0.1:$demo_port/work?n=$work_n" "http://127.0.0.1:$demo_diag/debug/pprof/profile?seconds=$prof_s"
overhead "go /" $go_pid "http://127.0.0.1:$go_port/" "http://127.0.0.1:$go_port/debug/pprof/profile?seconds=$prof_s"
overhead "go /work?n=$work_n" $go_pid "http://127.0.0.1:$go_port/work?n=$work_n" "http://127.0.0.1:$go_port/debug/pprof/profile?seconds=$prof_s"
fi

fidelity() {
  local name=$1 pid=$2 port=$3 profile_url=$4 loops=$5
  local file="$out/cpu-$name-$loops.pb.gz"
  wrk -t1 -c16 -d"$((fid_s + 3))s" "http://127.0.0.1:$port/" >/dev/null &
  local w=$!
  local loop_pids=()
  for _ in $(seq "$loops"); do
    (end=$((SECONDS + fid_s + 3)); while [ $SECONDS -lt $end ]; do curl -s -o /dev/null "http://127.0.0.1:$port/work?n=20000000"; done) &
    loop_pids+=($!)
  done
  sleep 1
  local c0 c1
  c0=$(cpu_ticks "$pid")
  curl -s -o "$file" "$profile_url" & local prof=$!
  sleep "$fid_s"
  c1=$(cpu_ticks "$pid")
  wait $prof; wait $w; for p in "${loop_pids[@]}"; do wait "$p"; done
  local sampled
  sampled=$(go tool pprof -top "$file" 2>/dev/null | sed -n 's/.*Total samples = \([0-9.]*\)\(m\?s\).*/\1 \2/p')
  python3 - "$sampled" "$c0" "$c1" "$tck" "$name" "$loops" >> "$out/fidelity" <<'PY'
import sys
(v, unit), c0, c1, tck, name, loops = sys.argv[1].split(), *map(float, sys.argv[2:5]), sys.argv[5], sys.argv[6]
sampled = float(v) / (1000 if unit == "ms" else 1)
used = (c1 - c0) / tck
print(f"{name} {loops} {sampled:.2f} {used:.2f} {sampled / used:.3f}")
PY
  tail -1 "$out/fidelity" | awk '{printf "  %-5s %s loops: sampled %s s of %s s used: %s\n", $1, $2, $3, $4, $5}'
}
: > "$out/fidelity"
if want 2; then
echo; echo "== 2. fidelity: sampled CPU / CPU used, ${fid_s}s windows, wrk on / plus N /work loops"
# Warm the demo's symbol cache so that its first answer's symbolization is not in a window.
curl -s -o /dev/null "http://127.0.0.1:$demo_diag/debug/pprof/profile?seconds=1"
for loops in $fid_loads; do
  fidelity demo $demo_pid $demo_port "http://127.0.0.1:$demo_diag/debug/pprof/profile?seconds=$fid_s" "$loops"
  fidelity go $go_pid $go_port "http://127.0.0.1:$go_port/debug/pprof/profile?seconds=$fid_s" "$loops"
done
fi
if want 1 || want 2; then
kill $demo_pid; wait $demo_pid 2>/dev/null || true
fi

latency() { # seconds of the window, then the time from its end to the last byte, in ms
  curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$demo_diag/debug/pprof/profile?seconds=1" |
    python3 -c "import sys; print(f'{(float(sys.stdin.read()) - 1) * 1000:.1f}')"
}
if want 3; then
echo; echo "== 3 and 4. answer latency after the window, and resident memory (fresh demo process)"
start_demo
rss0=$(rss $demo_pid)
# A little traffic, so that the profiles hold stacks to symbolize.
wrk -t1 -c4 -d"$((b2b + 8))s" "http://127.0.0.1:$demo_port/work?n=$work_n" >/dev/null &
load=$!
cold=$(latency)
rss1=$(rss $demo_pid)
: > "$out/warm"
for i in $(seq "$b2b"); do latency >> "$out/warm"; done
rss2=$(rss $demo_pid)
wait $load || true
kill $demo_pid; wait $demo_pid 2>/dev/null || true
fi

: > "$out/dumps"
if want 5; then
echo; echo "== 5. jemalloc heap profiling: active (B) against inactive (A), $rounds alternations"
start_demo 18081 16061 prof_active:false; pid_a=$demo_pid; port_a=18081
start_demo 18082 16062; pid_b=$demo_pid; port_b=18082
heap_pair "heap-prof demo /" "/"
heap_pair "heap-prof demo /work?n=$work_n" "/work?n=$work_n"
heap_pair "heap-prof demo /churn" "/churn?n=200&bytes=4096"
curl -sf -o /dev/null -X POST "http://127.0.0.1:18082/hold?mb=64"
for i in $(seq "$dumps"); do
  curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "http://127.0.0.1:16062/debug/pprof/heap" >> "$out/dumps"
done
dump_rss=$(rss $pid_b)
kill $pid_a $pid_b; wait $pid_a $pid_b 2>/dev/null || true
fi

if want 6; then
echo; echo "== 6. diag's trace layer, installed and idle (B) against not installed (A), $rounds alternations"
start_demo 18083 16063 "" --no-trace-layer; pid_a=$demo_pid; port_a=18083
start_demo 18084 16064; pid_b=$demo_pid; port_b=18084
heap_pair "trace-layer demo /" "/"
heap_pair "trace-layer demo /work?n=$work_n" "/work?n=$work_n"
# One window, to show the layer records when asked.
curl -sf -o "$out/trace.json" "http://127.0.0.1:16064/debug/pprof/trace?seconds=1" & trace_curl=$!
wrk -t1 -c4 -d2s "http://127.0.0.1:18084/" >/dev/null
wait $trace_curl
trace_events=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(len(d['traceEvents']), d['otherData']['events_dropped'])" "$out/trace.json")
kill $pid_a $pid_b; wait $pid_a $pid_b 2>/dev/null || true
fi

if want 7; then
echo; echo "== 7. a /trace window open (B) against none (A), one process, $rounds alternations"
start_demo 18085 16065; pid_w=$demo_pid
win_s=$((run_s + 2))
overhead "trace-window demo /" $pid_w "http://127.0.0.1:18085/" "http://127.0.0.1:16065/debug/pprof/trace?seconds=$win_s"
overhead "trace-window demo /work?n=$work_n" $pid_w "http://127.0.0.1:18085/work?n=$work_n" "http://127.0.0.1:16065/debug/pprof/trace?seconds=$win_s"
curl -sf -o "$out/trace7.json" "http://127.0.0.1:16065/debug/pprof/trace?seconds=$win_s" & trace_curl=$!
sleep 0.5; wrk -t1 -c32 -d"${run_s}s" "http://127.0.0.1:18085/" >/dev/null
wait $trace_curl
window_events=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['otherData']['events_kept'], d['otherData']['events_dropped'])" "$out/trace7.json")
kill $pid_w; wait $pid_w 2>/dev/null || true
fi

if want 8; then
echo; echo "== 8. RouteLabels installed (B) against left out (A, --no-route-labels), $rounds alternations"
start_demo 18098 16098 "" --no-route-labels; pid_a=$demo_pid; port_a=18098
start_demo 18099 16099; pid_b=$demo_pid; port_b=18099
heap_pair "route-labels demo /" "/"
kill $pid_a $pid_b; wait $pid_a $pid_b 2>/dev/null || true
fi

echo; echo "================ summary ================"
echo "machine: $(nproc) cores, $(uname -r), CONFIG_HZ $(zcat /proc/config.gz 2>/dev/null | sed -n 's/^CONFIG_HZ=//p')"
echo "overhead (server CPU per request B / A: demo/go = a CPU profile running / none;"
echo "  diag-idle = diag mounted and idle / not mounted;"
echo "  heap-prof = jemalloc profiling active / inactive; trace-layer = installed and idle / absent;"
echo "  trace-window = a /trace window open / none; route-labels = RouteLabels on / off;"
echo "  median of $rounds pairs [min, max]; throughput A -> B):"
for f in "$out"/overhead-*[!e]; do
  [ -s "$f" ] || continue
  python3 - "$f" "$(cat "$f.name")" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
ratios = sorted(b / a for a, _, b, _ in rows)
name = sys.argv[2]
us_a = statistics.median(r[0] for r in rows); us_b = statistics.median(r[2] for r in rows)
rps_a = statistics.median(r[1] for r in rows); rps_b = statistics.median(r[3] for r in rows)
print(f"  {name:<22} {statistics.median(ratios):.3f} [{ratios[0]:.3f}, {ratios[-1]:.3f}]  "
      f"{us_a:.2f} -> {us_b:.2f} us/req, {rps_a:.0f} -> {rps_b:.0f} req/s")
PY
done
if [ -s "$out/fidelity" ]; then
  echo "fidelity (sampled CPU / CPU used):"
  awk '{printf "  %-5s %s /work loops + wrk on /: %s (%s s of %s s)\n", $1, $2, $5, $3, $4}' "$out/fidelity"
fi
if want 3; then
  python3 - "$cold" "$out/warm" <<'PY'
import statistics, sys
warm = sorted(float(l) for l in open(sys.argv[2]) if l.strip())
print(f"end of window to last byte: cold (first profile) {float(sys.argv[1]):.0f} ms; "
      f"warm median {statistics.median(warm):.0f} ms [{warm[0]:.0f}, {warm[-1]:.0f}] over {len(warm)}")
PY
  echo "resident memory: $rss0 before any profile; $rss1 after the first;" \
       "$rss2 after $b2b more back to back"
fi
if [ -s "$out/dumps" ]; then
  python3 - "$out/dumps" "$dump_rss" <<'PY'
import statistics, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
ms = [t * 1000 for t, _ in rows]; kib = [b / 1024 for _, b in rows]
warm = sorted(ms[1:]) or ms
print(f"heap dump with 64 MiB held (request to last byte): first {ms[0]:.0f} ms, then median "
      f"{statistics.median(warm):.0f} ms [{warm[0]:.0f}, {warm[-1]:.0f}] over {len(warm)}; "
      f"{statistics.median(kib):.0f} KiB gzipped; process resident after: {sys.argv[2]}")
PY
fi
if want 6; then
  echo "a 1 s /trace window under wrk on /: $trace_events (events, dropped)"
fi
if want 7; then
  echo "a ${win_s:-} s /trace window under wrk -c32 on /: $window_events (events kept, dropped at the cap)"
fi
