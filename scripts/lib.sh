# Shared by scripts/test.sh and scripts/cpu-memory.sh (sourced, not run): installing the
# Debian packages a script drives, when their command (or file) is missing.

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "need root to run: $* (install it by hand, then rerun)" >&2; return 1
  fi
}

apt_updated=0
deb_present() { # a command on PATH, or (given as /an/absolute/path) a file
  case "$1" in
    /*) [ -e "$1" ] ;;
    *) command -v "$1" >/dev/null ;;
  esac
}

need_deb() { # need_deb COMMAND-OR-/PATH PACKAGE
  deb_present "$1" && return 0
  echo "installing $2 (for $1)"
  if [ $apt_updated = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$2" >/dev/null
  deb_present "$1" || { echo "$2 did not provide $1" >&2; return 1; }
}

# free_ports N: N distinct free TCP ports on 127.0.0.1, on one line (held open together
# while chosen, so none is given twice).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
