#!/bin/sh
# guix-farm-test-daemon: the test bed's stand-in for guix-daemon, which cannot be installed there.
# It is Debian's nix-daemon (Nix 2.8) with Guix's store and state directories, so that its store is
# /gnu/store and its socket /var/guix/daemon-socket/socket, where guix-daemon's are; the agent
# speaks the worker protocol to either. It runs as root: the daemon makes build sandboxes.
#
# It reads what the controller gives the daemon container of an agent pod (docs/agentpools.md):
#   DAEMON_SUBSTITUTE_URLS      substituters (the farm's bucket first), separated by spaces or commas
#   DAEMON_TRUSTED_PUBLIC_KEYS  Nix public keys (name:base64) whose signatures it accepts
#   DAEMON_MAX_JOBS             builds at once
#   DAEMON_SOCKET               must be the socket above
#   DAEMON_EXTRA_NIX_CONF       lines appended to nix.conf
# and guix-daemon's arguments, which the controller passes with the default command: --listen (must
# be the socket above), --max-jobs, --substitute-urls (added to the substituters) and
# --build-users-group (ignored: builds run as root in their sandbox); others go to nix-daemon.
# It is also installed as guix-daemon, so a pod whose command is guix-daemon runs it unchanged.
set -euf

# NIX_REMOTE in the daemon's own environment makes each of its workers a client of the daemon,
# which forks another worker for it, and so on until the machine runs out of processes.
unset NIX_REMOTE

export NIX_CONF_DIR=/etc/nix NIX_STORE_DIR=/gnu/store NIX_STATE_DIR=/var/guix NIX_LOG_DIR=/var/log/guix
export HOME="${HOME:-/root}"
socket=$NIX_STATE_DIR/daemon-socket/socket

check_socket() {
  if [ "$1" != "$socket" ]; then
    echo "guix-farm-test-daemon: nix-daemon listens on $socket only, not $1" >&2
    exit 2
  fi
}

# dedup WORD...: each word once, in the order first seen. The controller gives the substitute
# URLs both in the environment and as guix-daemon's --substitute-urls.
dedup() {
  out=
  for w in "$@"; do
    case " $out " in *" $w "*) ;; *) out="${out:+$out }$w" ;; esac
  done
  echo "$out"
}

[ -z "${DAEMON_SOCKET:-}" ] || check_socket "$DAEMON_SOCKET"
substituters=$(echo "${DAEMON_SUBSTITUTE_URLS:-}" | tr ',' ' ')
keys=$(echo "${DAEMON_TRUSTED_PUBLIC_KEYS:-}" | tr ',' ' ')
max_jobs=${DAEMON_MAX_JOBS:-}
for arg in "$@"; do
  shift
  case $arg in
    --listen=*) check_socket "${arg#--listen=}" ;;
    --max-jobs=*) max_jobs=${arg#--max-jobs=} ;;
    --substitute-urls=*) substituters="$substituters ${arg#--substitute-urls=}" ;;
    --build-users-group=*) ;;
    *) set -- "$@" "$arg" ;;
  esac
done

mkdir -p "$NIX_CONF_DIR" "$NIX_STORE_DIR" "$NIX_STATE_DIR/daemon-socket" "$NIX_LOG_DIR" "$HOME" /tmp
# Word splitting is wanted in dedup's arguments; globbing is off (set -f).
cat > "$NIX_CONF_DIR/nix.conf" <<CONF
build-users-group =
sandbox = true
trusted-users = root
experimental-features = nix-command
require-sigs = true
substituters = $(dedup $substituters)
trusted-public-keys = $(dedup $keys)
${max_jobs:+max-jobs = $max_jobs}
${DAEMON_EXTRA_NIX_CONF:-}
CONF

exec nix-daemon "$@"
