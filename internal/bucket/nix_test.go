package bucket

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/guixfarm/guix-farm/test/testbed"
)

// publishClosure publishes the closure of out from the source daemon's
// store, as the agent will: references and deriver from the daemon, files
// from the store on disk. The output goes with its NarHash (the daemon's
// path info), the rest without (the publisher hashes them first).
func publishClosure(t *testing.T, e *env, src *testbed.NixDaemon, out string) []string {
	t.Helper()
	closure := strings.Fields(src.MustRun(t, "nix-store", "--query", "--requisites", out))
	for _, p := range closure {
		item := DiskItem(p, src.HostPath(p))
		item.References = strings.Fields(src.MustRun(t, "nix-store", "--query", "--references", p))
		if d := src.MustRun(t, "nix-store", "--query", "--deriver", p); d != "unknown-deriver" {
			item.Deriver = d
		}
		item.System = "x86_64-linux"
		if p == out {
			item.NarHash = src.MustRun(t, "nix-store", "--query", "--hash", p)
		}
		if _, err := e.pub.Publish(context.Background(), item); err != nil {
			t.Fatalf("publish %s: %v", p, err)
		}
	}
	return closure
}

// TestNixSubstitutesFromBucket is the acceptance test: Nix 2.8, with
// require-sigs = true, substitutes a closure our publisher wrote into fresh
// stores when our key is trusted, byte for byte, and refuses it otherwise.
func TestNixSubstitutesFromBucket(t *testing.T) {
	src := testbed.StartNixDaemon(t, testbed.NixOptions{})
	e := newEnv(t)
	url := e.m.BucketURL(e.bucket)
	bb := src.AddBusybox(t)
	_, out := src.Build(t, bb, "uses-bb", `$bb/bin/busybox mkdir -p $out/bin && $bb/bin/busybox ln -s $bb/bin/busybox $out/bin/sh && echo "built with $bb" > $out/README`)
	closure := publishClosure(t, e, src, out)
	if len(closure) != 2 {
		t.Fatalf("closure %v, want busybox and the output", closure)
	}

	check := func(t *testing.T, dst *testbed.NixDaemon) {
		t.Helper()
		for _, p := range closure {
			if got := dst.MustRun(t, "nix-store", "--verify-path", p); got != "" {
				t.Errorf("verify-path %s: %s", p, got)
			}
			if a, b := src.MustRun(t, "nix-store", "-q", "--hash", p), dst.MustRun(t, "nix-store", "-q", "--hash", p); a != b {
				t.Errorf("%s: NarHash %s in the source, %s after substitution", p, a, b)
			}
			if !bytes.Equal(dumpBytes(t, src.HostPath(p)), dumpBytes(t, dst.HostPath(p))) {
				t.Errorf("%s differs after substitution", p)
			}
		}
		if sigs := dst.MustRun(t, "nix", "path-info", "--sigs", out); !strings.Contains(sigs, "farm-test-1:") {
			t.Errorf("path-info --sigs: %q", sigs)
		}
	}

	t.Run("nix-store --realise, trusted key", func(t *testing.T) {
		dst := testbed.StartNixDaemon(t, testbed.NixOptions{Substituters: []string{url}, TrustedPublicKeys: []string{testPublicKey}})
		dst.MustRun(t, "nix-store", "--realise", out)
		check(t, dst)
	})
	t.Run("nix copy --from, trusted key", func(t *testing.T) {
		dst := testbed.StartNixDaemon(t, testbed.NixOptions{TrustedPublicKeys: []string{testPublicKey}})
		dst.MustRun(t, "nix", "copy", "--from", url, out)
		check(t, dst)
	})
	t.Run("another key is refused", func(t *testing.T) {
		_, otherPub := otherKey(t)
		dst := testbed.StartNixDaemon(t, testbed.NixOptions{Substituters: []string{url}, TrustedPublicKeys: []string{otherPub}})
		if _, err := dst.Run(context.Background(), "nix-store", "--realise", out); err == nil {
			t.Error("nix-store --realise substituted with an untrusted signature")
		}
		_, err := dst.Run(context.Background(), "nix", "copy", "--from", url, out)
		if err == nil || !strings.Contains(err.Error(), "signature") {
			t.Errorf("nix copy --from with an untrusted signature: %v", err)
		}
		if got := dst.MustRun(t, "nix-store", "--check-validity", "--print-invalid", out); got != out {
			t.Errorf("%s became valid", out)
		}
	})
}
