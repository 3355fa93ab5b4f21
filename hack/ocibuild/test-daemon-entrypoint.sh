#!/bin/sh
# guix-farm-test-daemon: the test bed's stand-in for guix-daemon, which cannot be installed there.
# It is Debian's nix-daemon (Nix 2.8) with Guix's store and state directories, so that its store is
# /gnu/store and its socket /var/guix/daemon-socket/socket, where guix-daemon's are; the agent
# speaks the worker protocol to either. It runs as root: the daemon makes build sandboxes.
#
# Environment:
#   DAEMON_SUBSTITUTE_URLS      substituters (the farm's bucket URL), separated by spaces or commas
#   DAEMON_TRUSTED_PUBLIC_KEYS  Nix public keys (name:base64) whose signatures it accepts
#   DAEMON_EXTRA_NIX_CONF       lines appended to nix.conf
# Arguments: guix-daemon's, as the farm's pod passes them, are understood: --listen (must be the
# socket above), --max-jobs, --substitute-urls (added to the substituters) and
# --build-users-group (ignored: builds run as root in their sandbox). Others go to nix-daemon.
# It is also installed as guix-daemon, so a pod whose command is guix-daemon runs it unchanged.
set -eu

# NIX_REMOTE in the daemon's own environment makes each of its workers a client of the daemon,
# which forks another worker for it, and so on until the machine runs out of processes.
unset NIX_REMOTE

export NIX_CONF_DIR=/etc/nix NIX_STORE_DIR=/gnu/store NIX_STATE_DIR=/var/guix NIX_LOG_DIR=/var/log/guix
export HOME="${HOME:-/root}"
socket=$NIX_STATE_DIR/daemon-socket/socket

substituters=$(echo "${DAEMON_SUBSTITUTE_URLS:-}" | tr ',' ' ')
keys=$(echo "${DAEMON_TRUSTED_PUBLIC_KEYS:-}" | tr ',' ' ')
max_jobs=
for arg in "$@"; do
  shift
  case $arg in
    --listen=*)
      if [ "${arg#--listen=}" != "$socket" ]; then
        echo "guix-farm-test-daemon: nix-daemon listens on $socket only, not ${arg#--listen=}" >&2
        exit 2
      fi ;;
    --max-jobs=*) max_jobs=${arg#--max-jobs=} ;;
    --substitute-urls=*) substituters="$substituters ${arg#--substitute-urls=}" ;;
    --build-users-group=*) ;;
    *) set -- "$@" "$arg" ;;
  esac
done

mkdir -p "$NIX_CONF_DIR" "$NIX_STORE_DIR" "$NIX_STATE_DIR/daemon-socket" "$NIX_LOG_DIR" "$HOME" /tmp
cat > "$NIX_CONF_DIR/nix.conf" <<CONF
build-users-group =
sandbox = true
trusted-users = root
experimental-features = nix-command
require-sigs = true
substituters = $substituters
trusted-public-keys = $keys
${max_jobs:+max-jobs = $max_jobs}
${DAEMON_EXTRA_NIX_CONF:-}
CONF

exec nix-daemon "$@"
