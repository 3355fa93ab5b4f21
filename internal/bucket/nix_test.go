package bucket

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/internal/signing/keygen"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// publishClosure publishes the closure of out from the source daemon's
// store, as the agent will: references and deriver from the daemon, files
// from the store on disk. The output goes with its NarHash (the daemon's
// path info), the rest without (the publisher hashes them first).
func publishClosure(t *testing.T, e *env, src *testbed.NixDaemon, out string) []string {
	t.Helper()
	closure, items := daemonItems(t, src, out)
	for i, item := range items {
		if _, err := e.pub.Publish(context.Background(), item); err != nil {
			t.Fatalf("publish %s: %v", closure[i], err)
		}
	}
	return closure
}

// daemonItems returns the closure of out (dependencies first) and its
// items as the daemon describes them. The deriver goes as the daemon
// reports it, "unknown-deriver" included (busybox was added, not built).
func daemonItems(t *testing.T, src *testbed.NixDaemon, out string) ([]string, []StoreItem) {
	t.Helper()
	closure := strings.Fields(src.MustRun(t, "nix-store", "--query", "--requisites", out))
	var items []StoreItem
	for _, p := range closure {
		item := DiskItem(p, src.HostPath(p))
		item.References = strings.Fields(src.MustRun(t, "nix-store", "--query", "--references", p))
		item.Deriver = src.MustRun(t, "nix-store", "--query", "--deriver", p)
		item.System = "x86_64-linux"
		if p == out {
			item.NarHash = src.MustRun(t, "nix-store", "--query", "--hash", p)
		}
		items = append(items, item)
	}
	return closure, items
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

	check := func(t *testing.T, dst *testbed.NixDaemon, keyName string) {
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
		if sigs := dst.MustRun(t, "nix", "path-info", "--sigs", out); !strings.Contains(sigs, keyName+":") {
			t.Errorf("path-info --sigs: %q", sigs)
		}
	}

	t.Run("nix-store --realise, trusted key", func(t *testing.T) {
		dst := testbed.StartNixDaemon(t, testbed.NixOptions{Substituters: []string{url}, TrustedPublicKeys: []string{testPublicKey}})
		dst.MustRun(t, "nix-store", "--realise", out)
		check(t, dst, "farm-test-1")
	})
	t.Run("nix copy --from, trusted key", func(t *testing.T) {
		dst := testbed.StartNixDaemon(t, testbed.NixOptions{TrustedPublicKeys: []string{testPublicKey}})
		dst.MustRun(t, "nix", "copy", "--from", url, out)
		check(t, dst, "farm-test-1")
	})
	// The keys of guix-farm-controller keygen, and the batch the agent
	// publishes: Nix trusts the printed public key.
	t.Run("keygen keys, PublishClosure", func(t *testing.T) {
		keys, err := keygen.Generate(keygen.Options{Name: "farm-keygen-1", Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		e2 := newEnvOn(t, e.m)
		cfg := e2.cfg
		cfg.Keys, cfg.KeyFiles = signing.Keys{}, []string{keys.Files[signing.SecretDataNixKey], keys.Files[signing.SecretDataGuixKey]}
		pub, err := NewPublisher(cfg)
		if err != nil {
			t.Fatal(err)
		}
		_, items := daemonItems(t, src, out)
		slices.Reverse(items) // PublishClosure orders them itself
		if _, err := pub.PublishClosure(context.Background(), items, 0); err != nil {
			t.Fatal(err)
		}
		dst := testbed.StartNixDaemon(t, testbed.NixOptions{Substituters: []string{e2.m.BucketURL(e2.bucket)}, TrustedPublicKeys: []string{keys.NixPublic.String()}})
		dst.MustRun(t, "nix-store", "--realise", out)
		check(t, dst, "farm-keygen-1")
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
