package node

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/test/testbed"
)

// Start brings a node up for a test, registered with the apiserver of kubeconfig, with images
// (oci-archives) imported, and brings it down when the test ends, printing the tails of its logs
// if the test failed. It skips the test (fails it under GUIXFARM_REQUIRE_TESTBED=1) when this
// machine cannot run a node: not root, or a tool missing.
func Start(t testing.TB, kubeconfig string, images ...string) *Node {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "a node needs root (mount namespaces, cgroups, containers)")
	}
	for _, b := range Tools {
		testbed.Tool(t, b, "node")
	}
	busybox := testbed.Tool(t, "busybox", "nix")
	for _, b := range []string{"unshare", "nsenter", "mount", "ip"} {
		testbed.Tool(t, b, "nix") // util-linux and iproute2: in every Debian, listed for the message
	}
	// Short: the shims' socket directory is under it (see Config.StateDir).
	base := os.TempDir()
	if len(base) > 16 {
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "gfnode")
	if err != nil {
		t.Fatalf("creating the node's state directory: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	n, err := Up(ctx, Config{
		StateDir: dir, Kubeconfig: kubeconfig, ToolsBin: filepath.Dir(testbed.Tool(t, "kubelet", "node")),
		Busybox: busybox, Images: images, Logf: t.Logf,
	})
	if err != nil {
		os.Remove(dir) // empty unless Down failed, when its state is kept for the next Up
		t.Fatalf("starting the node: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kubelet log ends:\n%s", n.Logs("kubelet", 6000))
			t.Logf("containerd log ends:\n%s", n.Logs("containerd", 3000))
		}
		if err := n.Down(); err != nil {
			t.Errorf("bringing the node down: %v", err)
		}
	})
	return n
}

func skipOrFail(t testing.TB, msg string) {
	t.Helper()
	if testbed.Required() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
