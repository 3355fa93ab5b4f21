#!/usr/bin/env bash
# hack/node.sh: the test bed's single Kubernetes node (test/testbed/node, docs/node-test.md).
#
#   hack/node.sh up --kubeconfig FILE [--state-dir DIR] [--name node1] [--node-ip IP] [--dummy-ip IP] [ARCHIVE.tar...]
#   hack/node.sh down [--state-dir DIR]
#
# up builds the pinned kubelet, containerd, runc and CNI plugins (hack/tools.sh node; busybox from
# hack/tools.sh nix makes the pause image), starts containerd and a kubelet registered with the
# apiserver of FILE (the kubelet runs pods with those credentials), imports the oci-archives given
# (e.g. bin/images/*.tar from `make images`; pods use them with imagePullPolicy Never), waits for
# the Node object and returns, leaving the node running. down stops it and removes all it made.
# The state directory defaults to /tmp/guixfarm-node; it needs root.
set -euo pipefail
export GOTOOLCHAIN=local
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export TOOLS_DIR=${TOOLS_DIR:-$ROOT/.cache/tools}
export GUIXFARM_TOOLS_BIN=${GUIXFARM_TOOLS_BIN:-$TOOLS_DIR/bin}
if [ "${1:-}" = up ]; then "$ROOT/hack/tools.sh" node nix; fi
# Built, not run with go run, so that it runs in the caller's directory (relative paths hold).
go build -C "$ROOT" -o "$ROOT/bin/guixfarm-node" ./hack/node
exec "$ROOT/bin/guixfarm-node" "$@"
