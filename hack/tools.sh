#!/usr/bin/env bash
# Installs the pinned test-bed tools into a project-local cache ($TOOLS_DIR, default .cache/tools).
# Each tool is built from the Go module proxy once; a second run finds it and returns at once.
# Usage: hack/tools.sh [kube|kube-control-plane|kubelet|runc|containerd|cni|node|etcd|controller-gen|minio|mc|helm|nix|all]...
set -euo pipefail
export GOTOOLCHAIN=local
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS_DIR=${TOOLS_DIR:-$ROOT/.cache/tools}
BIN=$TOOLS_DIR/bin
mkdir -p "$BIN"

K8S_VERSION=v1.37.2
K8S_STAGING_VERSION=v0.37.2
ETCD_VERSION=v3.6.16
CONTROLLER_TOOLS_VERSION=v0.23.0
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
MC_VERSION=v0.0.0-20250313080218-cf909e1063a9
HELM_VERSION=v4.3.1
RUNC_VERSION=v1.5.2
CONTAINERD_VERSION=v2.4.2
CNI_PLUGINS_VERSION=v1.9.1

log() { echo "hack/tools: $*" >&2; }

# stamp NAME VERSION: true when BIN/NAME was built at VERSION.
stamp_ok() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" > "$BIN/.$1.version"; }

# tidy resolves a throwaway module quietly, showing go's output only when it fails.
tidy() {
  local out
  out=$(go mod tidy 2>&1) || { echo "$out" >&2; log "go mod tidy failed in $PWD"; return 1; }
}

# kube_module writes the throwaway module k8s.io/kubernetes binaries are built in, and sets
# KUBE_LDFLAGS (version stamps).
kube_module() {
  local mod=$TOOLS_DIR/src/kube
  mkdir -p "$mod"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  # A throwaway module: k8s.io/kubernetes replaces its staging modules with ./staging paths,
  # which only resolve inside its own tree, so pin each one to its published version.
  {
    echo 'module example.com/kubebuild'; echo; echo 'go 1.26.0'; echo
    echo "require k8s.io/kubernetes $K8S_VERSION"; echo; echo 'replace ('
    grep '=> ./staging' "$gomod" | awk '{print $1}' | grep -vE 'sample-(cli-plugin|controller)' |
      while read -r m; do echo "	$m => $m $K8S_STAGING_VERSION"; done
    echo ')'
  } > "$mod/go.mod"
  cat > "$mod/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  local bd p
  bd=$(date -u +%Y-%m-%dT%H:%M:%SZ); KUBE_LDFLAGS="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    KUBE_LDFLAGS="$KUBE_LDFLAGS -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=37 -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.gitTreeState=clean -X $p.buildDate=$bd"
  done
  (cd "$mod" && tidy)
}

# kube_build NAME...: builds each k8s.io/kubernetes/cmd/NAME at K8S_VERSION unless cached.
kube_build() {
  local todo=() n
  for n in "$@"; do stamp_ok "$n" "$K8S_VERSION" || todo+=("$n"); done
  [ ${#todo[@]} -gt 0 ] || return 0
  log "building ${todo[*]} $K8S_VERSION (kube-apiserver: about 12 minutes cold)"
  kube_module
  for n in "${todo[@]}"; do
    (cd "$TOOLS_DIR/src/kube" && go build -trimpath -ldflags "$KUBE_LDFLAGS" -o "$BIN/$n" "k8s.io/kubernetes/cmd/$n")
    stamp "$n" "$K8S_VERSION"
  done
}

kube() { kube_build kube-apiserver kubectl; }
# The scheduler and the controller-manager make and place the agent pools' pods in tests.
kube_control_plane() { kube_build kube-controller-manager kube-scheduler; }
# The kubelet of the single-node test (test/node, hack/node.sh).
kubelet() { kube_build kubelet; }

etcd() {
  if stamp_ok etcd "$ETCD_VERSION"; then return; fi
  log "building etcd $ETCD_VERSION"
  local mod=$TOOLS_DIR/src/etcd
  mkdir -p "$mod"
  cat > "$mod/go.mod" <<GOMOD
module example.com/etcdbuild

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION

replace (
	go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)
GOMOD
  cat > "$mod/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  (cd "$mod" && tidy &&
    go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  stamp etcd "$ETCD_VERSION"
}

goinstall() { # name module version
  if stamp_ok "$1" "$3"; then return; fi
  log "installing $1 $3"
  GOBIN=$BIN go install -trimpath -ldflags "-s -w" "$2@$3"
  stamp "$1" "$3"
}

controller_gen() { goinstall controller-gen sigs.k8s.io/controller-tools/cmd/controller-gen "$CONTROLLER_TOOLS_VERSION"; }
minio() { goinstall minio github.com/minio/minio "$MINIO_VERSION"; }
mc() { goinstall mc github.com/minio/mc "$MC_VERSION"; }
helm() { goinstall helm helm.sh/helm/v4/cmd/helm "$HELM_VERSION"; }

# apt_install PKG...: installs Debian packages (sudo when not root), quietly.
apt_install() {
  local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# nix: Debian's nix-bin (Nix 2.8) is the real daemon and substitute client of the tests;
# libgcrypt is the independent verifier of Guix signatures (it is what Guix itself uses).
nix() {
  if command -v nix-daemon >/dev/null && [ -x /bin/busybox ] && [ -f /usr/include/gcrypt.h ]; then return; fi
  log "installing nix-bin, busybox-static and libgcrypt20-dev from Debian"
  apt_install nix-bin busybox-static libgcrypt20-dev
}

# runc needs cgo and the seccomp build tag: the kubelet's default pod profile (RuntimeDefault under
# containerd) is a seccomp filter, and a runc without seccomp refuses any container given one
# ("seccomp: config provided but seccomp not supported"). The stamp names the tag, so a runc built
# without it is replaced.
runc() {
  local v="$RUNC_VERSION+seccomp"
  if stamp_ok runc "$v"; then return; fi
  if ! pkg-config --exists libseccomp 2>/dev/null; then
    log "installing libseccomp-dev and pkg-config from Debian (runc's seccomp support)"
    apt_install libseccomp-dev pkg-config
  fi
  log "building runc $RUNC_VERSION with seccomp"
  CGO_ENABLED=1 GOBIN=$BIN go install -trimpath -tags seccomp -ldflags "-s -w" "github.com/opencontainers/runc@$RUNC_VERSION"
  stamp runc "$v"
}

# containerd, its runc shim (containerd looks it up on PATH, next to runc) and ctr (imports images
# from OCI archives: the node has no registry). Without cgo: the only cgo part is the btrfs
# snapshotter, which the node does not use.
containerd() {
  local n todo=()
  for n in containerd containerd-shim-runc-v2 ctr; do stamp_ok "$n" "$CONTAINERD_VERSION" || todo+=("$n"); done
  [ ${#todo[@]} -gt 0 ] || return 0
  log "building containerd, containerd-shim-runc-v2 and ctr $CONTAINERD_VERSION"
  # The version the kubelet reports for the node (containerd://2.4.2); unset, it is 2.4.2+unknown.
  CGO_ENABLED=0 GOBIN=$BIN go install -trimpath \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION#v}" \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
  for n in containerd containerd-shim-runc-v2 ctr; do stamp "$n" "$CONTAINERD_VERSION"; done
}

# The CNI plugins the node's pod network needs (bridge, host-local, loopback), in $BIN/cni so that
# their generic names stay off the tools' directory. containerd reports the network ready, and so
# the kubelet the node, only once a CNI configuration loads: without one no scheduled pod lands.
cni() {
  local p ok=1
  for p in bridge host-local loopback; do [ -x "$BIN/cni/$p" ] || ok=0; done
  if [ $ok = 1 ] && [ "$(cat "$BIN/.cni-plugins.version" 2>/dev/null)" = "$CNI_PLUGINS_VERSION" ]; then return; fi
  log "building the CNI plugins bridge, host-local and loopback $CNI_PLUGINS_VERSION"
  mkdir -p "$BIN/cni"
  CGO_ENABLED=0 GOBIN=$BIN/cni go install -trimpath -ldflags "-s -w" \
    "github.com/containernetworking/plugins/plugins/main/bridge@$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_PLUGINS_VERSION" \
    "github.com/containernetworking/plugins/plugins/main/loopback@$CNI_PLUGINS_VERSION"
  echo "$CNI_PLUGINS_VERSION" > "$BIN/.cni-plugins.version"
}

[ $# -gt 0 ] || set -- all
for t in "$@"; do
  case $t in
    kube) kube ;; kube-control-plane) kube_control_plane ;; etcd) etcd ;; controller-gen) controller_gen ;; minio) minio ;; mc) mc ;; helm) helm ;; nix) nix ;;
    kubelet) kubelet ;; runc) runc ;; containerd) containerd ;; cni) cni ;;
    envtest) kube; etcd ;;
    node) kubelet; runc; containerd; cni ;;
    all) controller_gen; etcd; kube; kube_control_plane; minio; helm; nix; kubelet; runc; containerd; cni ;;
    *) echo "hack/tools.sh: unknown tool $t" >&2; exit 2 ;;
  esac
done
