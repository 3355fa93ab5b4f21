package storepath

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// MakeStorePath is Nix's makeStorePath: the path whose hash part is
// nixbase32(fold20(SHA-256("<typ>:sha256:<hex h>:<dir>:<name>"))).
func (d Dir) MakeStorePath(typ string, h [sha256.Size]byte, name string) (Path, error) {
	if err := d.Validate(); err != nil {
		return Path{}, err
	}
	if err := ValidateName(name); err != nil {
		return Path{}, fmt.Errorf("store path name: %w", err)
	}
	s := typ + ":sha256:" + hex.EncodeToString(h[:]) + ":" + string(d) + ":" + name
	return Path{Dir: d, Hash: nixbase32.EncodeToString(fold20(sha256.Sum256([]byte(s)))), Name: name}, nil
}

// fold20 XOR-folds a SHA-256 digest to 20 bytes (Nix compressHash).
func fold20(h [sha256.Size]byte) []byte {
	out := make([]byte, 20)
	for i, b := range h {
		out[i%20] ^= b
	}
	return out
}

// makeType appends the sorted references (and ":self") to a path type.
func makeType(typ string, refs []string, self bool) string {
	sorted := append([]string(nil), refs...)
	sort.Strings(sorted)
	var b strings.Builder
	b.WriteString(typ)
	for i, r := range sorted {
		if i > 0 && r == sorted[i-1] {
			continue // references are a set
		}
		b.WriteByte(':')
		b.WriteString(r)
	}
	if self {
		b.WriteString(":self")
	}
	return b.String()
}

// MakeTextPath is the path AddTextToStore gives content under name with the
// given references (full store paths); .drv files are stored this way.
func (d Dir) MakeTextPath(name string, content []byte, refs []string) (Path, error) {
	return d.MakeStorePath(makeType("text", refs, false), sha256.Sum256(content), name)
}

// MakeSourcePath is the path of a recursive (NAR) sha256 import such as
// `nix-store --add` or `guix download`: narHash is the SHA-256 of the NAR.
func (d Dir) MakeSourcePath(name string, narHash [sha256.Size]byte, refs []string, self bool) (Path, error) {
	return d.MakeStorePath(makeType("source", refs, self), narHash, name)
}

// MakeFixedOutputPath is the output path of a fixed-output derivation.
// hashAlgo is spelled as in a .drv: "sha256", or "r:sha256" for a NAR hash;
// hash is the raw digest.
func (d Dir) MakeFixedOutputPath(name, hashAlgo string, hash []byte) (Path, error) {
	algo := strings.TrimPrefix(hashAlgo, "r:")
	recursive := algo != hashAlgo
	if want, ok := digestSizes[algo]; !ok {
		return Path{}, fmt.Errorf("fixed-output hash algorithm %q: expected [r:]md5, sha1, sha256 or sha512", hashAlgo)
	} else if len(hash) != want {
		return Path{}, fmt.Errorf("fixed-output %s hash is %d bytes, expected %d", algo, len(hash), want)
	}
	if recursive && algo == "sha256" {
		var h [sha256.Size]byte
		copy(h[:], hash)
		return d.MakeSourcePath(name, h, nil, false)
	}
	inner := "fixed:out:" + hashAlgo + ":" + hex.EncodeToString(hash) + ":"
	return d.MakeStorePath("output:out", sha256.Sum256([]byte(inner)), name)
}

var digestSizes = map[string]int{"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}

// MakeOutputPath is the path of output outputName of an input-addressed
// derivation named drvName whose (output-masked) modulo hash is drvModuloHash.
func (d Dir) MakeOutputPath(drvModuloHash [sha256.Size]byte, outputName, drvName string) (Path, error) {
	name := drvName
	if outputName != "out" {
		name += "-" + outputName
	}
	return d.MakeStorePath("output:"+outputName, drvModuloHash, name)
}
