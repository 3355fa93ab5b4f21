// Package buildname derives the name of a Build from its derivation: deterministic, so that
// whoever creates the Build for a derivation (kubectl guixfarm submit, the controller creating
// Builds for missing inputs) finds the one already there instead of creating a second.
package buildname

import (
	"fmt"
	"path"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/guixfarm/guix-farm/internal/storepath"
)

const (
	// MaxLen bounds a name. Object names may be DNS-1123 subdomains of 253 characters, but 63 also
	// fits a label value (e.g. a label naming the Build another was created for) and a terminal.
	MaxLen = 63
	// HashLen is how much of the store path's hash part ends the name: 50 bits, so two
	// derivations with the same name collide only by accident (and submit refuses that).
	HashLen = 10
	// maxNameLen is what is left for the derivation's name after "-" and the hash.
	maxNameLen = MaxLen - 1 - HashLen
)

// For returns the Build name of the derivation drvPath (in any store directory):
// "<name>-<first HashLen characters of the hash>", where name is the derivation's name without
// ".drv", lowercased, with each run of characters a DNS-1123 subdomain cannot hold (or cannot hold
// there) replaced by "-", trimmed of leading and trailing "-" and "." and cut to fit MaxLen.
// A name with nothing usable left gives the hash part alone.
//
//	/gnu/store/0ga1ynkzg5mb6rzx6nb7r8yv9d5vsgvh-hello-2.12.1.drv -> hello-2.12.1-0ga1ynkzg5
func For(drvPath string) (string, error) {
	// Only the hash part is checked strictly: the name is whatever the Build's spec.derivation
	// holds (the CRD's pattern admits names Nix would refuse, such as ".x.drv"), and every byte
	// of it maps onto something.
	base := path.Base(drvPath)
	if !strings.HasPrefix(drvPath, "/") || len(base) < storepath.HashLen+1 || base[storepath.HashLen] != '-' {
		return "", fmt.Errorf("build name of %q: not a store path /<store dir>/<32 nix-base32 characters>-<name>.drv", drvPath)
	}
	hash, name := base[:storepath.HashLen], base[storepath.HashLen+1:]
	for i := 0; i < len(hash); i++ {
		if !nixbase32.Is(hash[i]) {
			return "", fmt.Errorf("build name of %q: hash part %q has %q, outside the nix-base32 alphabet", drvPath, hash, hash[i])
		}
	}
	if !strings.HasSuffix(name, storepath.DrvExt) {
		return "", fmt.Errorf("build name of %q: not a derivation: the name does not end in %s", drvPath, storepath.DrvExt)
	}
	name = sanitize(strings.TrimSuffix(name, storepath.DrvExt))
	if len(name) > maxNameLen {
		name = strings.TrimRight(name[:maxNameLen], "-.")
	}
	// nix-base32 is lowercase letters and digits: the hash part is a valid name on its own.
	if name == "" {
		return hash[:HashLen], nil
	}
	return name + "-" + hash[:HashLen], nil
}

// sanitize maps a store name ([A-Za-z0-9+._?=-]) onto DNS-1123 subdomain characters. Uppercase
// letters are lowercased; '.' is kept when it separates two alphanumerics (gcc-14.2.0), since a
// subdomain's dot-separated parts must each start and end with one; any other run of '.', '-',
// '_', '+', '?', '=' becomes a single '-'.
func sanitize(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	sep := "" // the pending run of separators
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		default:
			sep += string(c)
			continue
		}
		if sep != "" {
			if b.Len() > 0 { // leading separators are dropped
				if sep == "." {
					b.WriteByte('.')
				} else {
					b.WriteByte('-')
				}
			}
			sep = ""
		}
		b.WriteByte(c)
	}
	return b.String() // trailing separators are dropped
}
