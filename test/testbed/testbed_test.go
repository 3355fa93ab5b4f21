package testbed

import (
	"os"
	"strings"
	"testing"
)

func TestNixDaemonBuilds(t *testing.T) {
	d := StartNixDaemon(t, NixOptions{})
	bb := d.AddBusybox(t)
	if !strings.HasPrefix(bb, StoreDir+"/") || !strings.HasSuffix(bb, "-bbsrc") {
		t.Fatalf("busybox store path %q", bb)
	}
	_, out := d.Build(t, bb, "hello-bb", `echo "hello ${x:-world}" > $out`)
	data, err := os.ReadFile(d.HostPath(out))
	if err != nil || string(data) != "hello world\n" {
		t.Fatalf("output %s on the host: %q, %v", out, data, err)
	}
	// The host /gnu/store is not the daemon's.
	if _, err := os.Stat(out); err == nil {
		t.Errorf("%s is visible on the host /gnu/store: the bind mount leaked", out)
	}
	if got := d.MustRun(t, "nix-store", "--verify-path", out); got != "" {
		t.Errorf("verify-path: %q", got)
	}
}

func TestTwoDaemonsAreSeparate(t *testing.T) {
	a := StartNixDaemon(t, NixOptions{NoSandbox: true})
	b := StartNixDaemon(t, NixOptions{NoSandbox: true})
	bb := a.AddBusybox(t)
	if _, err := os.Stat(b.HostPath(bb)); err == nil {
		t.Fatalf("%s added to a appears in b", bb)
	}
	if out := b.MustRun(t, "nix-store", "--check-validity", "--print-invalid", bb); out != bb {
		t.Fatalf("b thinks %s is valid: %q", bb, out)
	}
}

func TestMinIO(t *testing.T) {
	m := StartMinIO(t)
	m.MakeBucket(t, "probe")
	if code, _ := m.Get(t, m.BucketURL("probe")+"/nothing"); code != 403 && code != 404 {
		t.Fatalf("anonymous GET of a private bucket: %d", code)
	}
}
