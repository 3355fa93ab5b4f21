// Package storepath parses, validates and computes Nix/Guix store paths for a
// configurable store directory. Guix uses /gnu/store, Nix /nix/store; nothing
// here assumes either (go-nix's storepath hard-codes /nix/store, hence this package).
package storepath

import (
	"fmt"
	"path"
	"regexp"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// Dir is a store directory such as "/gnu/store": absolute, clean, no trailing slash.
type Dir string

// DefaultDir is the Guix store directory, the farm's default.
const DefaultDir Dir = "/gnu/store"

const (
	// HashLen is the length of the nix-base32 hash part of a store path (160 bits).
	HashLen = 32
	// MaxNameLen is Nix's limit on the name part of a store path.
	MaxNameLen = 211
	// DrvExt ends the name of every derivation file.
	DrvExt = ".drv"
)

// nameClass is the set of characters Nix accepts in a store path name.
const nameClass = `[A-Za-z0-9+._?=-]`

// DerivationPattern matches a derivation path in DefaultDir. It is the literal
// the CRD validation uses; Dir.DerivationPattern gives it for any store dir.
const DerivationPattern = `^/gnu/store/[` + nixbase32.Alphabet + `]{32}-` + nameClass + `+\.drv$`

// Pattern returns an anchored regular expression matching any store path in d.
// Like the CRD pattern it does not encode the leading-dot and length rules; Parse does.
func (d Dir) Pattern() string {
	return `^` + regexp.QuoteMeta(string(d)) + `/[` + nixbase32.Alphabet + `]{32}-` + nameClass + `+$`
}

// DerivationPattern returns an anchored regular expression matching a .drv path in d.
func (d Dir) DerivationPattern() string {
	return `^` + regexp.QuoteMeta(string(d)) + `/[` + nixbase32.Alphabet + `]{32}-` + nameClass + `+\.drv$`
}

// Validate reports whether d is usable as a store directory.
func (d Dir) Validate() error {
	s := string(d)
	switch {
	case s == "":
		return fmt.Errorf("store directory is empty; expected an absolute path such as %s", DefaultDir)
	case !strings.HasPrefix(s, "/"):
		return fmt.Errorf("store directory %q is not absolute; expected e.g. %s", s, DefaultDir)
	case s == "/" || path.Clean(s) != s:
		return fmt.Errorf("store directory %q is not a clean path without trailing slash; expected e.g. %s", s, DefaultDir)
	}
	return nil
}

// Path is a parsed store path: Dir + "/" + Hash + "-" + Name.
type Path struct {
	Dir  Dir
	Hash string // 32 nix-base32 characters
	Name string
}

// String returns the full path.
func (p Path) String() string { return string(p.Dir) + "/" + p.Base() }

// Base returns the last element, "<hash>-<name>".
func (p Path) Base() string { return p.Hash + "-" + p.Name }

// IsDerivation reports whether p names a .drv file.
func (p Path) IsDerivation() bool { return strings.HasSuffix(p.Name, DrvExt) }

// IsDerivation reports whether s is a syntactically valid derivation path in d.
func (d Dir) IsDerivation(s string) bool {
	p, err := d.Parse(s)
	return err == nil && p.IsDerivation()
}

// PathError says why a string is not a store path and shows the expected shape.
type PathError struct {
	Path   string
	Dir    Dir
	Reason string
}

func (e *PathError) Error() string {
	dir := e.Dir
	if dir == "" {
		dir = "<store dir>"
	}
	return fmt.Sprintf("invalid store path %q: %s; expected %s/<32 nix-base32 chars>-<name>", e.Path, e.Reason, dir)
}

// Parse parses s as a store path directly inside d (no sub-path).
func (d Dir) Parse(s string) (Path, error) {
	if err := d.Validate(); err != nil {
		return Path{}, err
	}
	prefix := string(d) + "/"
	if !strings.HasPrefix(s, prefix) {
		return Path{}, &PathError{Path: s, Dir: d, Reason: "not in store directory " + string(d)}
	}
	hash, name, err := ParseBase(s[len(prefix):])
	if err != nil {
		return Path{}, &PathError{Path: s, Dir: d, Reason: err.Error()}
	}
	return Path{Dir: d, Hash: hash, Name: name}, nil
}

// ParseDerivation parses s as a store path in d that names a .drv file.
func (d Dir) ParseDerivation(s string) (Path, error) {
	p, err := d.Parse(s)
	if err != nil {
		return Path{}, err
	}
	if !p.IsDerivation() {
		return Path{}, &PathError{Path: s, Dir: d, Reason: "name does not end in " + DrvExt}
	}
	return p, nil
}

// ParseAny parses a store path in whatever store directory it names (its parent
// directory). Use it where the store dir is not known yet, e.g. inside a .drv.
func ParseAny(s string) (Path, error) {
	i := strings.LastIndexByte(s, '/')
	if i <= 0 {
		return Path{}, &PathError{Path: s, Reason: "not an absolute path below a store directory"}
	}
	return Dir(s[:i]).Parse(s)
}

// ParseBase splits "<hash>-<name>" and validates both parts.
func ParseBase(base string) (hash, name string, err error) {
	if len(base) < HashLen+2 || base[HashLen] != '-' {
		return "", "", fmt.Errorf("base name %q is not <32 nix-base32 chars>-<name>", base)
	}
	hash, name = base[:HashLen], base[HashLen+1:]
	for i := 0; i < len(hash); i++ {
		if !nixbase32.Is(hash[i]) {
			return "", "", fmt.Errorf("hash part %q has %q at offset %d, outside the nix-base32 alphabet %s", hash, hash[i], i, nixbase32.Alphabet)
		}
	}
	if err := ValidateName(name); err != nil {
		return "", "", err
	}
	return hash, name, nil
}

// ValidateName checks a store path name the way Nix does.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("name is empty")
	case len(name) > MaxNameLen:
		return fmt.Errorf("name is %d bytes long, the limit is %d", len(name), MaxNameLen)
	case name[0] == '.':
		return fmt.Errorf("name %q starts with '.'", name)
	}
	for i := 0; i < len(name); i++ {
		if !isNameChar(name[i]) {
			return fmt.Errorf("name %q has %q at offset %d; allowed are A-Z a-z 0-9 and + - . _ ? =", name, name[i], i)
		}
	}
	return nil
}

func isNameChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("+-._?=", c) >= 0
}
