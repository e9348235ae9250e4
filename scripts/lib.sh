# Shared by scripts/test.sh and scripts/overhead.sh (sourced, not run): installing the
# Debian packages a script drives, when their command is missing.

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "need root to run: $* (install it by hand, then rerun)" >&2; return 1
  fi
}

apt_updated=0
need_deb() { # need_deb COMMAND PACKAGE
  command -v "$1" >/dev/null && return 0
  echo "installing $2 (for $1)"
  if [ $apt_updated = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$2" >/dev/null
  command -v "$1" >/dev/null || { echo "$2 did not provide $1" >&2; return 1; }
}
