#!/usr/bin/env bash
# Fetches one profile from a service running diag into a timestamped file, and prints the
# command that opens it.
#
#   scripts/profile.sh HOST [cpu|heap|allocs|goroutine|trace|flamegraph] [SECONDS]
#
#   HOST     where diag answers: 127.0.0.1:6060, or a URL such as http://host:6060
#            (a path prefix other than /debug/pprof goes in the URL: http://host/admin/pprof)
#   KIND     cpu (default), heap, allocs, goroutine, trace or flamegraph
#   SECONDS  the window for cpu, trace and flamegraph (default 30 for cpu and
#            flamegraph, 5 for trace); for heap and allocs, a delta over that many seconds
#
# With DIAG_TOKEN set, it is sent as `Authorization: Bearer $DIAG_TOKEN`.
# Files land in the current directory, or in $DIAG_PROFILE_DIR when set.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] && [ $# -le 3 ] || usage
case "$1" in -h|--help) usage ;; esac
host=$1 kind=${2:-cpu} seconds=${3:-}

case "$host" in
  http://*|https://*) base=${host%/} ;;
  *) base="http://$host" ;;
esac
# A bare host:port gets diag's default prefix; a URL with a path keeps its own.
rest=${base#*://}
case "$rest" in */*) ;; *) base="$base/debug/pprof" ;; esac

if [ -n "$seconds" ] && ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "SECONDS must be a positive whole number of seconds, not '$seconds'" >&2
  exit 2
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
name=$(printf '%s' "$rest" | tr -c 'A-Za-z0-9.-' '_' | cut -c1-40)
case "$kind" in
  cpu)        path="profile?seconds=${seconds:-30}"; ext=pb.gz ;;
  heap)       path="heap${seconds:+?seconds=$seconds}"; ext=pb.gz ;;
  allocs)     path="allocs${seconds:+?seconds=$seconds}"; ext=pb.gz ;;
  goroutine)  path="goroutine"; ext=pb.gz ;;
  trace)      path="trace?seconds=${seconds:-5}"; ext=json ;;
  flamegraph) path="flamegraph?seconds=${seconds:-30}"; ext=svg ;;
  *) echo "unknown kind '$kind': use cpu, heap, allocs, goroutine, trace or flamegraph" >&2; exit 2 ;;
esac
dir=${DIAG_PROFILE_DIR:-.}
out="$dir/${kind}-${name}-${stamp}.${ext}"
n=1
while [ -e "$out" ]; do out="$dir/${kind}-${name}-${stamp}-$n.${ext}"; n=$((n + 1)); done
auth=()
[ -n "${DIAG_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $DIAG_TOKEN")

echo "fetching $base/$path ..." >&2
status=$(curl -sS "${auth[@]}" -o "$out" -w '%{http_code}' "$base/$path") || {
  rm -f "$out"; echo "could not reach $base/$path" >&2; exit 1
}
if [ "$status" != 200 ]; then
  echo "diag answered $status:" >&2
  cat "$out" >&2; echo >&2
  rm -f "$out"
  exit 1
fi

echo "$out"
case "$kind" in
  cpu|heap|allocs|goroutine)
    echo "open it with: go tool pprof -http=: $out   (or: go tool pprof -top $out)" >&2 ;;
  trace)
    echo "open it in https://ui.perfetto.dev (Open trace file) or chrome://tracing: $out" >&2 ;;
  flamegraph)
    echo "open it in a browser: xdg-open $out" >&2 ;;
esac
