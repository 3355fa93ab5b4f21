package signing_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand"
	"testing"

	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/test/gcryptverify"
)

// TestLibgcryptInterop holds the Go implementation against libgcrypt, which
// is what Guix itself calls.
func TestLibgcryptInterop(t *testing.T) {
	gc := gcryptverify.Build(t)
	rng := rand.New(rand.NewSource(42))

	// Messages: random ones plus one whose digest starts with a zero byte,
	// where a bit-length-based truncation would differ from libgcrypt's.
	msgs := [][]byte{[]byte(""), []byte("StorePath: /gnu/store/x\n")}
	for i := 0; i < 4; i++ {
		m := make([]byte, 1+rng.Intn(400))
		rng.Read(m)
		msgs = append(msgs, m)
	}
	for i := 0; ; i++ {
		m := []byte(fmt.Sprintf("leading-zero-%d", i))
		if h := sha256.Sum256(m); h[0] == 0 {
			msgs = append(msgs, m)
			break
		}
	}

	t.Run("ours verify under libgcrypt", func(t *testing.T) {
		for i := 0; i < 3; i++ {
			k, err := signing.GenerateGuixKey(rng)
			if err != nil {
				t.Fatal(err)
			}
			pub := []byte(k.Public().String())
			for j, m := range msgs {
				sig := k.SignNarinfo(m)
				if err := gc.Verify(sig, m, pub); err != nil {
					t.Errorf("key %d message %d: %v\n%s", i, j, err, sig)
				}
				if err := gc.Verify(sig, append(m, '!'), pub); !errors.Is(err, gcryptverify.ErrHashMismatch) {
					t.Errorf("key %d message %d: libgcrypt on a changed body: %v", i, j, err)
				}
			}
		}
	})

	t.Run("libgcrypt's verify under ours", func(t *testing.T) {
		for i := 0; i < 3; i++ {
			keyData, err := gc.GenKey()
			if err != nil {
				t.Fatal(err)
			}
			k, err := signing.ParseGuixSecretKey(keyData)
			if err != nil {
				t.Fatalf("libgcrypt key: %v\n%s", err, keyData)
			}
			pub, err := signing.ParseGuixPublicKey(keyData)
			if err != nil || pub != k.Public() {
				t.Fatalf("public half of libgcrypt key: %v", err)
			}
			for j, m := range msgs {
				sig, err := gc.Sign(keyData, m)
				if err != nil {
					t.Fatal(err)
				}
				if err := signing.VerifyGuix([]signing.GuixPublicKey{pub}, m, sig); err != nil {
					t.Errorf("key %d message %d: %v\n%s", i, j, err, sig)
				}
				// Both implement RFC 6979 nonces, so the bytes agree too.
				if ours := k.SignNarinfo(m); !bytes.Equal(ours, sig) {
					t.Errorf("key %d message %d: signatures differ\nours:\n%s\nlibgcrypt:\n%s", i, j, ours, sig)
				}
			}
		}
	})

	t.Run("our key file in libgcrypt", func(t *testing.T) {
		k, err := signing.GenerateGuixKey(rng)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := gc.Sign(k.Text(), msgs[1])
		if err != nil {
			t.Fatalf("libgcrypt rejected our signing-key.sec: %v\n%s", err, k.Text())
		}
		if err := signing.VerifyGuix([]signing.GuixPublicKey{k.Public()}, msgs[1], sig); err != nil {
			t.Error(err)
		}
	})
}
