package bucket

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/guixfarm/guix-farm/internal/availability"
	"github.com/guixfarm/guix-farm/internal/drvsource"
	"github.com/guixfarm/guix-farm/internal/signing"
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

// TestReaderUntrusted: with trusted keys, a narinfo none of them signed is absent for Present
// (an error matching availability.ErrUntrusted says why) and for Read (drvsource.ErrNotFound);
// a .drv whose content does not hash to its path is invalid (drvsource.ErrInvalid), even signed.
func TestReaderUntrusted(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, pub := otherKey(t)
	other, err := signing.ParseNixPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	farm, _ := signing.ParseNixPublicKey(testPublicKey)
	if _, err := e.pub.Publish(ctx, DiskItem(helloPath, file(t, "hello\n"))); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pub.Publish(ctx, DiskItem(drvPath, file(t, demoDrv))); err != nil {
		t.Fatal(err)
	}
	strict, _ := NewReader(e.cfg, ReaderOptions{TrustedNixKeys: []signing.NixPublicKey{other}})
	ok, err := strict.Present(ctx, helloPath)
	var ue *UntrustedError
	if ok || !errors.Is(err, availability.ErrUntrusted) || !errors.As(err, &ue) {
		t.Errorf("Present of a narinfo another key signed: %v, %v; want absent and ErrUntrusted", ok, err)
	}
	if _, err := strict.Read(ctx, drvPath); !errors.Is(err, drvsource.ErrNotFound) || !strings.Contains(err.Error(), "not trusted") {
		t.Errorf("Read of a .drv another key signed: %v; want ErrNotFound saying it is not trusted", err)
	}
	good, _ := NewReader(e.cfg, ReaderOptions{TrustedNixKeys: []signing.NixPublicKey{farm}})
	if ok, err := good.Present(ctx, helloPath); !ok || err != nil {
		t.Errorf("Present with the farm's key trusted: %v, %v", ok, err)
	}
	if _, err := good.Read(ctx, drvPath); err != nil {
		t.Errorf("Read of the demo .drv: %v", err)
	}
	// Another derivation's content, published (and signed) under the demo's path.
	e2 := newEnvOn(t, e.m)
	forged := strings.Replace(demoDrv, "echo hi", "echo pwned", 1)
	if _, err := e2.pub.Publish(ctx, DiskItem(drvPath, file(t, forged))); err != nil {
		t.Fatal(err)
	}
	r2, _ := NewReader(e2.cfg, ReaderOptions{TrustedNixKeys: []signing.NixPublicKey{farm}})
	if _, err := r2.Read(ctx, drvPath); !errors.Is(err, drvsource.ErrInvalid) || !strings.Contains(err.Error(), "not that derivation") {
		t.Errorf("Read of a .drv that does not hash to its path: %v; want ErrInvalid", err)
	}
}
