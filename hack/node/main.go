// Command node brings the test bed's single Kubernetes node up or down (test/testbed/node):
// containerd, runc and a kubelet registered with the apiserver of a kubeconfig, with images
// imported from oci-archives. hack/node.sh builds the tools first and runs it.
//
//	go run ./hack/node up --kubeconfig FILE [--state-dir DIR] [--name node1] [--node-ip IP] [--dummy-ip IP] [ARCHIVE.tar...]
//	go run ./hack/node down [--state-dir DIR]
//
// up returns once the Node object is registered and leaves the node running; down stops it and
// removes everything it made. See docs/node-test.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/guixfarm/guix-farm/test/testbed"
	"github.com/guixfarm/guix-farm/test/testbed/node"
)

// defaultStateDir is short: the shims' socket directory is under it (node.Config.StateDir).
const defaultStateDir = "/tmp/guixfarm-node"

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "up" && os.Args[1] != "down") {
		fmt.Fprintln(os.Stderr, "usage: node up --kubeconfig FILE [flags] [ARCHIVE.tar...] | node down [--state-dir DIR]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	stateDir := fs.String("state-dir", defaultStateDir, "the node's state directory (at most 40 bytes)")
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "node: "+format+"\n", args...) }
	if os.Args[1] == "down" {
		_ = fs.Parse(os.Args[2:])
		if err := node.Down(*stateDir, logf); err != nil {
			logf("down: %v", err)
			os.Exit(1)
		}
		return
	}
	cfg := node.Config{Detach: true, Logf: logf}
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "the kubelet's kubeconfig (required)")
	fs.StringVar(&cfg.ToolsBin, "tools-bin", testbed.ToolsBin(), "directory of kubelet, containerd, runc, ctr (hack/tools.sh node)")
	fs.StringVar(&cfg.Name, "name", "node1", "the node's name")
	fs.StringVar(&cfg.NodeIP, "node-ip", "", "the node's address (default: the host's first global IPv4)")
	fs.StringVar(&cfg.DummyIP, "dummy-ip", "", "put the node's address on a dummy interface with this IP")
	timeout := fs.Duration("timeout", 6*time.Minute, "give up bringing the node up after this long")
	_ = fs.Parse(os.Args[2:])
	cfg.StateDir, cfg.Images = *stateDir, fs.Args()
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, *timeout)
	defer cancelT()
	n, err := node.Up(ctx, cfg)
	if err != nil {
		logf("up: %v", err)
		os.Exit(1)
	}
	logf("containerd: %s (ctr --address %[1]s -n k8s.io ...); kubelet logs: %s/logs; down: hack/node.sh down --state-dir %[2]s", n.Socket, n.StateDir)
}
