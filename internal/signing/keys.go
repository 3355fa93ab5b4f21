package signing

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"sort"
	"strings"
)

// Names of the entries of the Kubernetes Secret that holds the farm's keys.
const (
	// SecretDataNixKey holds one or more Nix secret keys, one per line
	// (the file nix-store --generate-binary-cache-key writes). Further keys
	// may be given as nix-secret-key-<suffix>, e.g. during rotation.
	SecretDataNixKey = "nix-secret-key"
	// SecretDataGuixKey holds the Guix signing key, /etc/guix/signing-key.sec.
	SecretDataGuixKey = "guix-signing-key.sec"
	// SecretDataHost optionally names the host in Guix "Signature:" fields.
	SecretDataHost = "signing-host"
	// SecretDataNixPublicKey and SecretDataGuixPublicKey may sit next to the
	// secrets for operators' convenience; they are ignored.
	SecretDataNixPublicKey  = "nix-public-key"
	SecretDataGuixPublicKey = "guix-signing-key.pub"
)

// DefaultHost is the Guix signature's host field when none is configured;
// Guix only displays it.
const DefaultHost = "guix-farm"

// Keys is everything the farm signs narinfos with.
type Keys struct {
	Nix  []NixSecretKey
	Guix *GuixSecretKey
	// Host goes into the Guix "Signature: 1;<host>;..." field.
	Host string
}

// LoadKeysFromFiles reads key files, telling their format by content: a
// Guix signing-key.sec (an S-expression) or a Nix secret key file
// (NAME:base64, one or more lines). At most one Guix key is allowed.
func LoadKeysFromFiles(paths ...string) (Keys, error) {
	if len(paths) == 0 {
		return Keys{}, fmt.Errorf("signing keys: no key files given")
	}
	k := Keys{Host: DefaultHost}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return Keys{}, fmt.Errorf("signing keys: %w", err)
		}
		if err := k.add(data, "file "+p); err != nil {
			return Keys{}, err
		}
	}
	return k, k.check()
}

// KeysFromSecretData reads the data of a Kubernetes Secret: entries
// nix-secret-key (and nix-secret-key-*), guix-signing-key.sec, and optionally
// signing-host. nix-public-key and guix-signing-key.pub are ignored.
func KeysFromSecretData(data map[string][]byte) (Keys, error) {
	k := Keys{Host: DefaultHost}
	names := make([]string, 0, len(data))
	for n := range data {
		names = append(names, n)
	}
	sort.Strings(names) // deterministic key order and errors
	for _, n := range names {
		v := data[n]
		where := "secret entry " + n
		switch {
		case n == SecretDataHost:
			if h := strings.TrimSpace(string(v)); h != "" {
				if strings.ContainsAny(h, ";\n") {
					return Keys{}, fmt.Errorf("signing keys: %s: host %q must not contain ';' or newlines", where, h)
				}
				k.Host = h
			}
		case n == SecretDataNixPublicKey, n == SecretDataGuixPublicKey:
		case n == SecretDataNixKey, strings.HasPrefix(n, SecretDataNixKey+"-"):
			if looksLikeSexp(v) {
				return Keys{}, fmt.Errorf("signing keys: %s holds a Guix key; put it under %s", where, SecretDataGuixKey)
			}
			if err := k.add(v, where); err != nil {
				return Keys{}, err
			}
		case n == SecretDataGuixKey:
			if !looksLikeSexp(v) {
				return Keys{}, fmt.Errorf("signing keys: %s does not hold an S-expression; it must be Guix's /etc/guix/signing-key.sec", where)
			}
			if err := k.add(v, where); err != nil {
				return Keys{}, err
			}
		default:
			return Keys{}, fmt.Errorf("signing keys: unknown secret entry %q; known entries: %s, %s (or %s-<suffix>), %s", n, SecretDataGuixKey, SecretDataNixKey, SecretDataNixKey, SecretDataHost)
		}
	}
	return k, k.check()
}

func looksLikeSexp(b []byte) bool { return bytes.HasPrefix(bytes.TrimSpace(b), []byte("(")) }

func (k *Keys) add(data []byte, where string) error {
	if looksLikeSexp(data) {
		g, err := ParseGuixSecretKey(data)
		if err != nil {
			if _, perr := ParseGuixPublicKey(data); perr == nil {
				return fmt.Errorf("signing keys: %s holds a Guix public key; the farm needs the secret key signing-key.sec", where)
			}
			return fmt.Errorf("signing keys: %s: %w", where, err)
		}
		if k.Guix != nil {
			return fmt.Errorf("signing keys: %s: a second Guix key; give exactly one signing-key.sec", where)
		}
		k.Guix = &g
		return nil
	}
	lines := 0
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		lines++
		if _, raw, ok := strings.Cut(line, ":"); ok {
			if b, err := base64.StdEncoding.DecodeString(raw); err == nil && len(b) == 32 {
				return fmt.Errorf("signing keys: %s line %d holds a Nix public key; the farm needs the secret key (the first file nix-store --generate-binary-cache-key writes)", where, i+1)
			}
		}
		nk, err := ParseNixSecretKey(line)
		if err != nil {
			return fmt.Errorf("signing keys: %s line %d: %w", where, i+1, err)
		}
		for _, have := range k.Nix {
			if have.Name == nk.Name {
				return fmt.Errorf("signing keys: %s: two Nix keys named %q; Nix picks keys by name, so names must differ", where, nk.Name)
			}
		}
		k.Nix = append(k.Nix, nk)
	}
	if lines == 0 {
		return fmt.Errorf("signing keys: %s is empty", where)
	}
	return nil
}

func (k *Keys) check() error {
	if len(k.Nix) == 0 && k.Guix == nil {
		return fmt.Errorf("signing keys: no keys found; give a Guix signing-key.sec and/or a Nix secret key")
	}
	return nil
}
