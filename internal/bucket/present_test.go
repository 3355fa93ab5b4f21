package bucket

import (
	"context"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
)

// TestReaderPresent: Present is true only when both the narinfo and the nar
// its URL names are in the bucket, is not cached, and returns errors other
// than not-found.
func TestReaderPresent(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	r, err := NewReader(e.cfg, ReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	present := func(want bool) {
		t.Helper()
		got, err := r.Present(ctx, helloPath)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("Present(%s) = %v, want %v", helloPath, got, want)
		}
	}
	present(false) // narinfo absent

	res, err := e.pub.Publish(ctx, DiskItem(helloPath, file(t, "hello\n")))
	if err != nil {
		t.Fatal(err)
	}
	present(true) // not cached: the negative answer above does not stand

	// The narinfo stays but its nar is deleted (by hand, or by a GC): a
	// client could not substitute it, so it is absent.
	if err := e.m.Client.RemoveObject(ctx, e.bucket, res.NarKey, minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Client.StatObject(ctx, e.bucket, NarInfoKey(mustParse(t, helloPath)), minio.StatObjectOptions{}); err != nil {
		t.Fatalf("the narinfo should still be there: %v", err)
	}
	present(false)

	// Republishing restores the nar.
	if _, err := e.pub.Publish(ctx, DiskItem(helloPath, file(t, "hello\n"))); err != nil {
		t.Fatal(err)
	}
	present(true)

	if _, err := r.Present(ctx, "not-a-store-path"); err == nil {
		t.Error("Present of a malformed path: no error")
	}
}

func TestReaderPresentErrors(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.pub.Publish(ctx, DiskItem(helloPath, file(t, "hello\n"))); err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(*Config){
		"wrong secret":   func(c *Config) { c.SecretKey = "wrong-secret-key" },
		"missing bucket": func(c *Config) { c.Bucket = "no-such-bucket" },
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := e.cfg
			mod(&cfg)
			r, err := NewReader(cfg, ReaderOptions{})
			if err != nil {
				t.Fatal(err)
			}
			ok, err := r.Present(ctx, helloPath)
			if err == nil {
				t.Fatalf("Present = %v with no error", ok)
			}
			if !strings.Contains(err.Error(), helloPath) {
				t.Errorf("error does not name the path: %v", err)
			}
			t.Log(err)
		})
	}
}
