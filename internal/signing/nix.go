// Package signing holds the farm's signing keys and the two signature
// schemes its narinfos carry: Nix's Ed25519 "Sig:" over a fingerprint and
// Guix's ECDSA-over-Ed25519 "Signature:" over the narinfo text.
package signing

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"unicode"
)

// NixSecretKey is a Nix binary-cache secret key, as made by
// `nix-store --generate-binary-cache-key NAME sk pk`: "NAME:base64(64 bytes)".
type NixSecretKey struct {
	Name string
	Key  ed25519.PrivateKey
}

// NixPublicKey is a Nix binary-cache public key, "NAME:base64(32 bytes)", the
// form clients list in trusted-public-keys.
type NixPublicKey struct {
	Name string
	Key  ed25519.PublicKey
}

func splitNixKey(s, what string, size int) (string, []byte, error) {
	s = strings.TrimSpace(s)
	name, b64, ok := strings.Cut(s, ":")
	if !ok || name == "" {
		return "", nil, fmt.Errorf("nix %s key (%d bytes, no NAME: prefix): want NAME:BASE64 as written by nix-store --generate-binary-cache-key", what, len(s))
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", nil, fmt.Errorf("nix %s key %q: bad base64: %w", what, name, err)
	}
	if len(raw) != size {
		hint := ""
		if what == "secret" && len(raw) == ed25519.PublicKeySize {
			hint = " (this is a public key; the farm needs the secret key file)"
		}
		return "", nil, fmt.Errorf("nix %s key %q: %d bytes, want %d%s", what, name, len(raw), size, hint)
	}
	return name, raw, nil
}

// ParseNixSecretKey parses "NAME:base64(seed ‖ public key)".
func ParseNixSecretKey(s string) (NixSecretKey, error) {
	name, raw, err := splitNixKey(s, "secret", ed25519.PrivateKeySize)
	if err != nil {
		return NixSecretKey{}, err
	}
	k := ed25519.PrivateKey(raw)
	// The second half must be the seed's public key, or signatures would
	// not verify under the published public key.
	if !ed25519.NewKeyFromSeed(k.Seed()).Equal(k) {
		return NixSecretKey{}, fmt.Errorf("nix secret key %q: public half does not match the seed; regenerate it with nix-store --generate-binary-cache-key", name)
	}
	return NixSecretKey{Name: name, Key: k}, nil
}

// GenerateNixKey makes a new key pair named name from rand
// (crypto/rand.Reader in production), as `nix-store
// --generate-binary-cache-key NAME sk pk` does: Text is the secret key
// file, Public().String() the public one. By convention the name is
// "<host>-<n>"; clients trust keys by it, so it must differ from the
// names of the farm's other keys.
func GenerateNixKey(rand io.Reader, name string) (NixSecretKey, error) {
	if err := checkNixKeyName(name); err != nil {
		return NixSecretKey{}, fmt.Errorf("generate nix key: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand)
	if err != nil {
		return NixSecretKey{}, fmt.Errorf("generate nix key %q: %w", name, err)
	}
	return NixSecretKey{Name: name, Key: priv}, nil
}

// checkNixKeyName refuses names Nix would misread: "NAME:BASE64" splits at
// the first colon, and trusted-public-keys is a whitespace-separated list.
func checkNixKeyName(name string) error {
	if name == "" {
		return fmt.Errorf("the key name is empty; use e.g. cache.example.org-1")
	}
	if i := strings.IndexFunc(name, func(r rune) bool { return r == ':' || unicode.IsSpace(r) || !unicode.IsPrint(r) }); i >= 0 {
		return fmt.Errorf("key name %q has %q at offset %d; Nix key names cannot hold colons, spaces or control characters", name, name[i], i)
	}
	return nil
}

// ParseNixPublicKey parses "NAME:base64(32 bytes)".
func ParseNixPublicKey(s string) (NixPublicKey, error) {
	name, raw, err := splitNixKey(s, "public", ed25519.PublicKeySize)
	if err != nil {
		return NixPublicKey{}, err
	}
	return NixPublicKey{Name: name, Key: ed25519.PublicKey(raw)}, nil
}

// Public returns the matching public key.
func (k NixSecretKey) Public() NixPublicKey {
	return NixPublicKey{Name: k.Name, Key: k.Key.Public().(ed25519.PublicKey)}
}

// Text renders the secret key in Nix's file format. String deliberately
// does not, so logging a key never leaks it.
func (k NixSecretKey) Text() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.Key)
}

// String names the key without revealing it.
func (k NixSecretKey) String() string { return "nix secret key " + k.Name }

// GoString keeps %#v from printing the key bytes.
func (k NixSecretKey) GoString() string { return k.String() }

// String renders the public key as clients write it in trusted-public-keys.
func (k NixPublicKey) String() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.Key)
}

// Sign returns the "Sig:" value "NAME:base64(signature)" over fingerprint.
func (k NixSecretKey) Sign(fingerprint string) string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(ed25519.Sign(k.Key, []byte(fingerprint)))
}

// VerifyNix reports whether sig ("NAME:base64") is a valid signature of
// fingerprint by the key in pubs with that name, as Nix checks it.
func VerifyNix(pubs []NixPublicKey, fingerprint, sig string) bool {
	name, b64, ok := strings.Cut(sig, ":")
	if !ok {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return false
	}
	for _, p := range pubs {
		if p.Name == name && len(p.Key) == ed25519.PublicKeySize && ed25519.Verify(p.Key, []byte(fingerprint), raw) {
			return true
		}
	}
	return false
}
