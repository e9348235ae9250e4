#!/usr/bin/env bash
# What a running CPU profile costs the demo, and how faithful it is, measured side by side
# with Go's net/http/pprof (../shared/peers/go-counter) in the same run.
#
#   scripts/overhead.sh            the full run (about 20 minutes; progress is printed)
#   scripts/overhead.sh --quick    a few seconds per part: proves the script works end to end
#   scripts/overhead.sh --rounds N N alternations per overhead pair instead of 10
#   scripts/overhead.sh --parts "5 6"  only these parts (0 1 2 3 5 6 7 8 9; 3 covers 4; 8 only when asked)
#
# Measures, printing a summary at the end (docs/performance.md quotes it):
#  0. what diag costs while nobody profiles: the server's CPU time per request under wrk
#     with diag mounted on the service's own listener and its trace layer installed (B,
#     `--diag-listen main`) against no diag at all (A, `--diag-listen off
#     --no-trace-layer --no-route-labels`; the demo's requests stay wrapped in
#     diag::tasks::Traced), two processes of the same binary, alternated;
#  1. overhead: the server's CPU time per request (from /proc/PID/stat) under wrk on `/`
#     and on fixed-work `/work?n=`, with a CPU profile running (B) against none (A),
#     alternating A and B; the median of the per-pair ratios B/A, with min and max, and
#     throughput beside it; for the demo and for Go; and for the demo the same cost
#     computed bottom-up: the profile's samples (its X-Diag-Samples header) times the
#     cost of one (sample_us below, from `cargo bench -p benches --bench cpu_sample`),
#     plus the CPU time of diag's sampler thread (diag-sampler), over the process's CPU
#     time while the profile ran (including the answer's symbolizing and encoding after
#     the window, which is not counted as overhead: a thread pool's threads come and go,
#     so it cannot be read per thread);
#  2. fidelity: sampled CPU time (go tool pprof's "Total samples") over the CPU time the
#     process used in the same window, at 99 Hz (Go: 100 Hz), under wrk on `/` plus 1, 2
#     and 4 concurrent `/work` loops;
#  3. the time from the end of a 1 s window to the last byte of the answer, cold (first
#     profile of the process) and warm, with how many addresses each window brought that
#     no earlier profile of the process had (symbolizing those is the work after the
#     window): a `/work` load throughout, plus in each warm window a short load on one
#     path of a rotating list, so that some windows bring new code and most bring none;
#     the time per new address is the least-squares slope of time over new addresses;
#  4. resident memory before the first profile, after it, and after many back-to-back ones;
#  5. what jemalloc heap profiling costs: the same CPU per request, on `/`, `/work?n=` and
#     the allocation-heavy `/churn`, with profiling active (B, the demo's default, samples
#     unwound by diag's frame-pointer walker) against inactive (A,
#     `_RJEM_MALLOC_CONF=prof_active:false`): two processes of the same binary,
#     alternated; then `/churn` again with profiling active and jemalloc's own libgcc
#     unwinder (B, `--heap-libgcc-unwinder`) against the same A; and how long a heap dump
#     takes and how big it is, 64 MiB held;
#  6. what diag's trace layer costs while no /trace window is open: the same CPU per
#     request with the layer installed and idle (B) against without it (A,
#     `--no-trace-layer`), two processes of the same binary, alternated;
#  7. what an open /trace window costs: the same CPU per request while a window spans the
#     wrk run (B) against none (A), in one process, alternated;
#  8. what the always-on CPU recorder costs (19 Hz, 10 minutes kept): the same CPU per
#     request with it on (B, `--cpu-recorder 10m`) against off (A), two processes of the
#     same binary, alternated (only with --parts 8). Every other part runs the demo with
#     the recorder off (DEMO_CPU_RECORDER=off), so their figures keep their meaning.
#  9. what diag's RouteLabels layer costs: the same CPU per request on `/` with the layer
#     (B, the demo's default) against without it (A, `--no-route-labels`), two processes
#     of the same binary, alternated.
# Traffic goes to 127.0.0.1 only, bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
rounds_arg=""
parts="0 1 2 3 5 6 7 9"
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
# Free ports, taken all at once (the names keep the port each part used to have fixed).
# shellcheck disable=SC2034
read -r p16060 p16061 p16062 p16063 p16064 p16065 p16068 p16069 p16098 p16099 p17070 p18080 p18081 p18082 p18083 p18084 p18085 p18086 p18087 p18088 p18089 p18098 p18099 < <(free_ports 23)
demo_port=${p18080}; demo_diag=${p16060}; go_port=${p17070}
peer=../shared/peers/go-counter
[ -d "$peer" ] || { echo "the Go peer is missing at $peer" >&2; exit 1; }

# Rough minutes per part at 10 rounds of 3 s (part 2 and 3 do not depend on rounds).
estimate=$(python3 -c "
per = {'0': 2.2, '1': 4.5, '2': 1.2, '3': 2.0, '5': 4.7, '6': 2.2, '7': 3.0, '8': 2.2, '9': 1.2}
fixed = {'2', '3'}
total = sum(per[p] * (1 if p in fixed else $rounds / 10) * ($run_s / 3 if p not in fixed else 1)
            for p in '$parts'.split() if p in per)
print(max(1, round(total)))")
echo "parts $parts, $rounds rounds: about $estimate minutes after the build; progress below."
echo "building the demo (release) and the Go peer..."
cargo build --release -q -p demo
(cd "$peer" && GOFLAGS=-mod=mod go build -o "$OLDPWD/target/go-counter" .)

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# CPU ticks of PID's threads named NAME, from each thread's stat after its name, so a name
# with spaces cannot shift the fields.
thread_ticks() { # PID NAME
  local sum=0 d t
  for d in /proc/"$1"/task/*; do
    if [ "$(cat "$d/comm" 2>/dev/null)" = "$2" ]; then
      t=$(sed 's/.*) //' "$d/stat" 2>/dev/null | awk '{print $12+$13}'); sum=$((sum + ${t:-0}))
    fi
  done
  echo $sum
}
# One sample of diag's engine (signal delivery and handler) at 32 frames, in µs:
# docs/performance.md, "The cost of one sample" (cargo bench -p benches --bench cpu_sample).
sample_us=${SAMPLE_US:-2.83}
rss() { awk '/^RssAnon/{a=$2} /^RssFile/{f=$2} END{printf "%d MiB (%d anonymous + %d file-backed)", (a+f)/1024, a/1024, f/1024}' "/proc/$1/status"; }
wait_http() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done; echo "no answer from $1" >&2; exit 1; }

# The demo's recorder is on by default; the parts measure without it unless they say.
export DEMO_CPU_RECORDER=${DEMO_CPU_RECORDER:-off}
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
  local bu="$out/bottomup-${name//[\/ ?=]/_}"
  : > "$bu"
  for r in $(seq "$rounds"); do
    a=$(measure "$pid" "$url")
    local c0 d0 c1 d1
    c0=$(cpu_ticks "$pid"); d0=$(thread_ticks "$pid" diag-sampler)
    curl -s -o /dev/null -D "$bu.hdr" "$profile_url" & local prof=$!
    sleep 0.5
    b=$(measure "$pid" "$url")
    wait $prof
    c1=$(cpu_ticks "$pid"); d1=$(thread_ticks "$pid" diag-sampler)
    echo "$a $b" >> "$file"
    local samples
    samples=$(tr -d '\r' < "$bu.hdr" | sed -n 's/^x-diag-samples: //ip')
    [ -n "$samples" ] && echo "$samples $((d1 - d0)) $((c1 - c0))" >> "$bu"
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
start_demo ${p18086} off "" --no-trace-layer --no-route-labels; pid_a=$demo_pid; port_a=${p18086}
start_demo ${p18087} main; pid_b=$demo_pid; port_b=${p18087}
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

latency() { # FILE: a 1 s profile saved there; prints the time from the window's end to the last byte, in ms
  curl -s -o "$1" -w '%{time_total}' "http://127.0.0.1:$demo_diag/debug/pprof/profile?seconds=1" |
    python3 -c "import sys; print(f'{(float(sys.stdin.read()) - 1) * 1000:.1f}')"
}
# Paths loaded, one per warm window in turn, beside the /work load: new code now and then.
lat_paths=("/" "/hash?n=20000" "/churn?n=200&bytes=4096" "/metrics" "/sleep?ms=1" "/readyz")
if want 3; then
echo; echo "== 3 and 4. answer latency after the window, and resident memory (fresh demo process)"
start_demo
rss0=$(rss $demo_pid)
# A little traffic, so that the profiles hold stacks to symbolize.
wrk -t1 -c4 -d"$((3 * b2b + 8))s" "http://127.0.0.1:$demo_port/work?n=$work_n" >/dev/null &
load=$!
cold=$(latency "$out/lat-0.pb.gz")
rss1=$(rss $demo_pid)
: > "$out/warm"
for i in $(seq "$b2b"); do
  path=${lat_paths[$(( (i - 1) % ${#lat_paths[@]} ))]}
  (end=$((SECONDS + 2)); while [ $SECONDS -lt $end ]; do curl -s -o /dev/null "http://127.0.0.1:$demo_port$path"; done) &
  loop=$!
  echo "$(latency "$out/lat-$i.pb.gz") $path" >> "$out/warm"
  wait $loop
done
rss2=$(rss $demo_pid)
kill $load 2>/dev/null || true; wait $load 2>/dev/null || true
kill $demo_pid; wait $demo_pid 2>/dev/null || true
fi

: > "$out/dumps"
if want 5; then
echo; echo "== 5. jemalloc heap profiling: active (B) against inactive (A), $rounds alternations"
start_demo ${p18081} ${p16061} prof_active:false; pid_a=$demo_pid; port_a=${p18081}
start_demo ${p18082} ${p16062}; pid_b=$demo_pid; port_b=${p18082}
start_demo ${p18088} ${p16068} "" --heap-libgcc-unwinder; pid_c=$demo_pid; port_c=${p18088}
for p in ${p16062}:frame-pointer ${p16068}:jemalloc; do
  got=$(curl -s -o /dev/null -D - "http://127.0.0.1:${p%%:*}/debug/pprof/heap" |
        tr -d '\r' | sed -n 's/^x-diag-heap-unwinder: //ip')
  [ "$got" = "${p#*:}" ] || { echo "the demo on ${p%%:*} unwinds heap samples with '$got', not ${p#*:}" >&2; exit 1; }
done
heap_pair "heap-prof demo /" "/"
heap_pair "heap-prof demo /work?n=$work_n" "/work?n=$work_n"
heap_pair "heap-prof demo /churn" "/churn?n=200&bytes=4096"
pid_fp=$pid_b; port_fp=$port_b; pid_b=$pid_c; port_b=$port_c
heap_pair "heap-prof-libgcc demo /churn" "/churn?n=200&bytes=4096"
pid_b=$pid_fp; port_b=$port_fp; kill $pid_c; wait $pid_c 2>/dev/null || true
curl -sf -o /dev/null -X POST "http://127.0.0.1:${p18082}/hold?mb=64"
for i in $(seq "$dumps"); do
  curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "http://127.0.0.1:${p16062}/debug/pprof/heap" >> "$out/dumps"
done
dump_rss=$(rss $pid_b)
kill $pid_a $pid_b; wait $pid_a $pid_b 2>/dev/null || true
fi

if want 6; then
echo; echo "== 6. diag's trace layer, installed and idle (B) against not installed (A), $rounds alternations"
start_demo ${p18083} ${p16063} "" --no-trace-layer; pid_a=$demo_pid; port_a=${p18083}
start_demo ${p18084} ${p16064}; pid_b=$demo_pid; port_b=${p18084}
heap_pair "trace-layer demo /" "/"
heap_pair "trace-layer demo /work?n=$work_n" "/work?n=$work_n"
# One window, to show the layer records when asked.
curl -sf -o "$out/trace.json" "http://127.0.0.1:${p16064}/debug/pprof/trace?seconds=1" & trace_curl=$!
wrk -t1 -c4 -d2s "http://127.0.0.1:${p18084}/" >/dev/null
wait $trace_curl
trace_events=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(len(d['traceEvents']), d['otherData']['events_dropped'])" "$out/trace.json")
kill $pid_a $pid_b; wait $pid_a $pid_b 2>/dev/null || true
fi

if want 7; then
echo; echo "== 7. a /trace window open (B) against none (A), one process, $rounds alternations"
start_demo ${p18085} ${p16065}; pid_w=$demo_pid
win_s=$((run_s + 2))
overhead "trace-window demo /" $pid_w "http://127.0.0.1:${p18085}/" "http://127.0.0.1:${p16065}/debug/pprof/trace?seconds=$win_s"
overhead "trace-window demo /work?n=$work_n" $pid_w "http://127.0.0.1:${p18085}/work?n=$work_n" "http://127.0.0.1:${p16065}/debug/pprof/trace?seconds=$win_s"
curl -sf -o "$out/trace7.json" "http://127.0.0.1:${p16065}/debug/pprof/trace?seconds=$win_s" & trace_curl=$!
sleep 0.5; wrk -t1 -c32 -d"${run_s}s" "http://127.0.0.1:${p18085}/" >/dev/null
wait $trace_curl
window_events=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['otherData']['events_kept'], d['otherData']['events_dropped'])" "$out/trace7.json")
kill $pid_w; wait $pid_w 2>/dev/null || true
fi

if want 8; then
echo; echo "== 8. the CPU recorder on (B) against off (A), $rounds alternations"
start_demo ${p18088} ${p16068}; pid_a=$demo_pid; port_a=${p18088}
start_demo ${p18089} ${p16069} "" --cpu-recorder 10m; pid_b=$demo_pid; port_b=${p18089}
index=$(curl -sf "http://127.0.0.1:${p16069}/debug/pprof/")
case $index in *"The CPU recorder is on"*) ;; *) echo "part 8: the recorder is not on in B" >&2; exit 1 ;; esac
heap_pair "recorder demo /" "/"
heap_pair "recorder demo /work?n=$work_n" "/work?n=$work_n"
kill $pid_a $pid_b; wait $pid_a $pid_b 2>/dev/null || true
fi

if want 9; then
echo; echo "== 9. RouteLabels installed (B) against left out (A, --no-route-labels), $rounds alternations"
start_demo ${p18098} ${p16098} "" --no-route-labels; pid_a=$demo_pid; port_a=${p18098}
start_demo ${p18099} ${p16099}; pid_b=$demo_pid; port_b=${p18099}
heap_pair "route-labels demo /" "/"
kill $pid_a $pid_b; wait $pid_a $pid_b 2>/dev/null || true
fi

echo; echo "================ summary ================"
echo "machine: $(nproc) cores, $(uname -r), CONFIG_HZ $(zcat /proc/config.gz 2>/dev/null | sed -n 's/^CONFIG_HZ=//p')"
echo "overhead (server CPU per request B / A: demo/go = a CPU profile running / none;"
echo "  diag-idle = diag mounted and idle / not mounted;"
echo "  heap-prof = jemalloc profiling active / inactive (heap-prof-libgcc: with jemalloc's own unwinder);"
echo "  trace-layer = installed and idle / absent;"
echo "  trace-window = a /trace window open / none; recorder = the CPU recorder on / off;"
echo "  route-labels = RouteLabels on / off;"
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
for f in "$out"/bottomup-*[!r]; do
  [ -s "$f" ] || continue
  python3 - "$f" "$sample_us" "$tck" <<'PY'
import sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
us, tck = float(sys.argv[2]), float(sys.argv[3])
samples = sum(r[0] for r in rows); diag_s = sum(r[1] for r in rows) / tck; cpu_s = sum(r[2] for r in rows) / tck
cost = samples * us * 1e-6 + diag_s
name = sys.argv[1].split("bottomup-", 1)[1]
print(f"  bottom-up {name:<20} {1 + cost / max(cpu_s - cost, 1e-9):.4f}: {samples:.0f} samples x {us} us "
      f"= {samples * us * 1e-3:.1f} ms + diag-sampler {diag_s * 1e3:.0f} ms, of {cpu_s:.2f} s of CPU "
      f"over {len(rows)} profiles")
PY
done
if [ -s "$out/fidelity" ]; then
  echo "fidelity (sampled CPU / CPU used):"
  awk '{printf "  %-5s %s /work loops + wrk on /: %s (%s s of %s s)\n", $1, $2, $5, $3, $4}' "$out/fidelity"
fi
if want 3; then
  python3 - "$cold" "$out/warm" "$out" <<'PY'
import re, statistics, subprocess, sys
def addresses(path):
    raw = subprocess.run(["go", "tool", "pprof", "-raw", path], capture_output=True, text=True).stdout
    return set(re.findall(r"^\s+\d+: (0x[0-9a-f]+) ", raw, re.M))
seen = addresses(f"{sys.argv[3]}/lat-0.pb.gz")
cold = float(sys.argv[1])
rows = []
for i, line in enumerate(l for l in open(sys.argv[2]) if l.strip()):
    ms, path = line.split(maxsplit=1)
    a = addresses(f"{sys.argv[3]}/lat-{i + 1}.pb.gz")
    rows.append((float(ms), len(a - seen), len(a), path.strip()))
    seen |= a
warm = sorted(r[0] for r in rows)
print(f"end of window to last byte: cold (first profile, {len(addresses(sys.argv[3] + '/lat-0.pb.gz'))} "
      f"addresses, all new) {cold:.0f} ms; "
      f"warm median {statistics.median(warm):.0f} ms [{warm[0]:.0f}, {warm[-1]:.0f}] over {len(warm)}")
n = [r[1] for r in rows]; t = [r[0] for r in rows]
if len(set(n)) > 1:
    mn, mt = statistics.mean(n), statistics.mean(t)
    slope = sum((x - mn) * (y - mt) for x, y in zip(n, t)) / sum((x - mn) ** 2 for x in n)
    print(f"  time per new address (slope over the warm windows): {slope:.3f} ms; "
          f"intercept {mt - slope * mn:.0f} ms")
few = [r for r in rows if r[1] <= 200]
if few:
    print(f"  windows bringing <= 200 new addresses: {len(few)}, slowest {max(r[0] for r in few):.0f} ms")
for ms, new, total, path in rows:
    print(f"    {ms:6.0f} ms  {new:4d} new of {total:4d} addresses  (load {path})")
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
