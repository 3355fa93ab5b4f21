// Package narinfo reads, writes, signs and verifies the .narinfo files of
// the bucket. One narinfo serves Guix and Nix clients: Guix's "Signature:"
// covers the text above it, Nix's "Sig:" covers a fingerprint, and each
// client ignores the other's field.
package narinfo

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// NarInfo is one narinfo. References and Deriver are store base names
// ("<hash>-<name>"), as in the file.
type NarInfo struct {
	StorePath   string
	URL         string
	Compression string
	FileHash    string
	FileSize    uint64
	NarHash     string
	NarSize     uint64
	References  []string
	Deriver     string
	System      string
	CA          string
	// Sigs are the Nix "Sig:" values ("keyname:base64").
	Sigs []string
	// Signatures are the Guix "Signature:" values ("1;host;base64").
	Signatures []string

	// raw is the text Parse read, and rendered what Bytes would have
	// produced right after it: while the fields still render the same, raw
	// is what Bytes and SignedBody return, so signatures over other layouts
	// (older guix publish signed URL and Compression too) keep verifying.
	raw, rendered []byte
}

// Parse reads a narinfo. Unknown keys of either ecosystem are skipped; when
// URL, Compression, FileHash or FileSize repeat (guix publish lists one block
// per compression), the last one wins, as in Nix.
func Parse(data []byte) (*NarInfo, error) {
	n := &NarInfo{}
	seen := map[string]int{}
	for i, line := range strings.Split(string(data), "\n") {
		lineNo := i + 1
		if strings.TrimSpace(line) == "" {
			continue
		}
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("narinfo line %d: %q is not \"Key: value\"", lineNo, line)
		}
		value = strings.TrimPrefix(value, " ")
		switch key {
		case "StorePath", "NarHash", "NarSize", "References", "Deriver", "System", "CA":
			if prev, dup := seen[key]; dup {
				return nil, fmt.Errorf("narinfo line %d: %s repeats line %d", lineNo, key, prev)
			}
			seen[key] = lineNo
		}
		var err error
		switch key {
		case "StorePath":
			n.StorePath = value
			_, err = storepath.ParseAny(value)
		case "URL":
			n.URL = value
		case "Compression":
			n.Compression = value
		case "FileHash":
			n.FileHash = value
			err = checkHash(value)
		case "FileSize":
			n.FileSize, err = strconv.ParseUint(value, 10, 64)
		case "NarHash":
			n.NarHash = value
			err = checkHash(value)
		case "NarSize":
			n.NarSize, err = strconv.ParseUint(value, 10, 64)
			if err == nil && n.NarSize == 0 {
				err = fmt.Errorf("must not be 0")
			}
		case "References":
			n.References = strings.Fields(value)
			for _, r := range n.References {
				if _, _, rerr := storepath.ParseBase(r); rerr != nil {
					err = fmt.Errorf("reference %q: %w", r, rerr)
					break
				}
			}
		case "Deriver":
			if value != "unknown-deriver" {
				n.Deriver = value
				if value != "" {
					_, _, err = storepath.ParseBase(value)
				}
			}
		case "System":
			n.System = value
		case "CA":
			n.CA = value
		case "Sig":
			n.Sigs = append(n.Sigs, value)
		case "Signature":
			n.Signatures = append(n.Signatures, value)
		}
		if err != nil {
			return nil, fmt.Errorf("narinfo line %d: %s: %w", lineNo, key, err)
		}
	}
	for _, req := range []string{"StorePath", "NarHash", "NarSize"} {
		if _, ok := seen[req]; !ok {
			return nil, fmt.Errorf("narinfo: missing %s", req)
		}
	}
	if n.URL == "" {
		return nil, fmt.Errorf("narinfo %s: missing URL", n.StorePath)
	}
	n.raw = append([]byte{}, data...)
	n.rendered = n.render()
	return n, nil
}

// checkHash accepts "sha256:" + 52 nix-base32 characters, the only form
// Guix reads.
func checkHash(h string) error {
	algo, digest, ok := strings.Cut(h, ":")
	if !ok || algo != "sha256" {
		return fmt.Errorf("%q: want sha256:<nix-base32>", h)
	}
	if len(digest) != nixbase32.EncodedLen(32) {
		return fmt.Errorf("%q: %d hash characters, want %d nix-base32", h, len(digest), nixbase32.EncodedLen(32))
	}
	if _, err := nixbase32.DecodeString(digest); err != nil {
		return fmt.Errorf("%q: not nix-base32: %w", h, err)
	}
	return nil
}

// storeDir returns the directory of StorePath, which references live in.
func (n *NarInfo) storeDir() (string, error) {
	p, err := storepath.ParseAny(n.StorePath)
	if err != nil {
		return "", fmt.Errorf("narinfo StorePath: %w", err)
	}
	return string(p.Dir), nil
}

// ObjectName is the narinfo's key in the bucket: "<hash part>.narinfo".
func (n *NarInfo) ObjectName() (string, error) {
	p, err := storepath.ParseAny(n.StorePath)
	if err != nil {
		return "", fmt.Errorf("narinfo StorePath: %w", err)
	}
	return p.Hash + ".narinfo", nil
}

// Fingerprint is what a Nix "Sig:" signs:
// 1;<store path>;<nar hash>;<nar size>;<full reference paths, sorted, comma-joined>.
func (n *NarInfo) Fingerprint() (string, error) {
	dir, err := n.storeDir()
	if err != nil {
		return "", err
	}
	if err := checkHash(n.NarHash); err != nil {
		return "", fmt.Errorf("narinfo %s: NarHash %w", n.StorePath, err)
	}
	if n.NarSize == 0 {
		return "", fmt.Errorf("narinfo %s: NarSize is 0", n.StorePath)
	}
	refs := make([]string, 0, len(n.References))
	for _, r := range n.References {
		if _, _, err := storepath.ParseBase(r); err != nil {
			return "", fmt.Errorf("narinfo %s: reference %q: %w", n.StorePath, r, err)
		}
		refs = append(refs, dir+"/"+r)
	}
	slices.Sort(refs)
	refs = slices.Compact(refs)
	return "1;" + n.StorePath + ";" + n.NarHash + ";" + strconv.FormatUint(n.NarSize, 10) + ";" + strings.Join(refs, ","), nil
}

// Bytes renders the narinfo: StorePath, NarHash, NarSize, References,
// Deriver, System, the Guix Signature lines, then URL, Compression,
// FileHash, FileSize, CA and the Nix Sig lines. A parsed, unchanged narinfo
// renders as the bytes it was parsed from.
func (n *NarInfo) Bytes() []byte {
	out := n.render()
	if n.raw != nil && bytes.Equal(out, n.rendered) {
		return append([]byte{}, n.raw...)
	}
	return out
}

// signedPart renders the lines a Guix signature covers.
func (n *NarInfo) signedPart() []byte {
	var b bytes.Buffer
	line := func(k, v string) { b.WriteString(k + ": " + v + "\n") }
	line("StorePath", n.StorePath)
	line("NarHash", n.NarHash)
	line("NarSize", strconv.FormatUint(n.NarSize, 10))
	// Nix needs "References: " with its space even when empty.
	line("References", strings.Join(n.References, " "))
	if n.Deriver != "" {
		line("Deriver", n.Deriver)
	}
	if n.System != "" {
		line("System", n.System)
	}
	return b.Bytes()
}

func (n *NarInfo) render() []byte {
	var b bytes.Buffer
	line := func(k, v string) { b.WriteString(k + ": " + v + "\n") }
	b.Write(n.signedPart())
	for _, s := range n.Signatures {
		line("Signature", s)
	}
	if n.URL != "" {
		line("URL", n.URL)
	}
	if n.Compression != "" {
		line("Compression", n.Compression)
	}
	if n.FileHash != "" {
		line("FileHash", n.FileHash)
	}
	if n.FileSize != 0 {
		line("FileSize", strconv.FormatUint(n.FileSize, 10))
	}
	if n.CA != "" {
		line("CA", n.CA)
	}
	for _, s := range n.Sigs {
		line("Sig", s)
	}
	return b.Bytes()
}

// SignedBody returns the bytes a Guix signature covers: Bytes() up to the
// first "Signature:" (Guix searches the text for that string), or the
// whole text if there is none.
func (n *NarInfo) SignedBody() []byte {
	text := n.Bytes()
	if i := bytes.Index(text, []byte("Signature:")); i >= 0 {
		return text[:i]
	}
	return text
}

// Sign adds a Nix "Sig:" for each Nix key (replacing one by the same key
// name) and, with a Guix key, sets the single Guix "Signature:". Guix
// signatures over a different body than the one now rendered are dropped,
// since they could no longer verify.
func (n *NarInfo) Sign(k signing.Keys) error {
	fp, err := n.Fingerprint()
	if err != nil {
		return fmt.Errorf("sign narinfo: %w", err)
	}
	if n.URL == "" || n.Compression == "" {
		return fmt.Errorf("sign narinfo %s: URL and Compression must be set (Nix assumes bzip2 without Compression)", n.StorePath)
	}
	if len(k.Nix) == 0 && k.Guix == nil {
		return fmt.Errorf("sign narinfo %s: no signing keys", n.StorePath)
	}
	oldBody := n.SignedBody()
	n.raw, n.rendered = nil, nil
	body := n.signedPart()
	if !bytes.Equal(oldBody, body) {
		n.Signatures = nil
	}
	for _, nk := range k.Nix {
		n.Sigs = slices.DeleteFunc(n.Sigs, func(s string) bool { return strings.HasPrefix(s, nk.Name+":") })
		n.Sigs = append(n.Sigs, nk.Sign(fp))
	}
	if k.Guix != nil {
		host := k.Host
		if host == "" {
			host = signing.DefaultHost
		}
		n.Signatures = []string{signing.FormatGuixSignatureField(host, k.Guix.SignNarinfo(body))}
	}
	return nil
}

// Verify checks the narinfo as the clients would: with nixTrusted, some
// Sig must verify over the fingerprint; with guixTrusted, the first
// Signature (the one Guix reads) must verify over SignedBody, which must
// include StorePath, NarHash and References. At least one list must be given.
func (n *NarInfo) Verify(nixTrusted []signing.NixPublicKey, guixTrusted []signing.GuixPublicKey) error {
	if len(nixTrusted) == 0 && len(guixTrusted) == 0 {
		return fmt.Errorf("verify narinfo %s: no trusted keys given", n.StorePath)
	}
	if len(nixTrusted) > 0 {
		fp, err := n.Fingerprint()
		if err != nil {
			return fmt.Errorf("verify narinfo: %w", err)
		}
		ok := false
		for _, s := range n.Sigs {
			if signing.VerifyNix(nixTrusted, fp, s) {
				ok = true
				break
			}
		}
		if !ok {
			return fmt.Errorf("verify narinfo %s: none of %d Sig lines verifies with a trusted Nix key", n.StorePath, len(n.Sigs))
		}
	}
	if len(guixTrusted) > 0 {
		if len(n.Signatures) == 0 {
			return fmt.Errorf("verify narinfo %s: no Guix Signature line", n.StorePath)
		}
		body := n.SignedBody()
		for _, f := range []string{"StorePath", "NarHash", "References"} {
			if !hasField(body, f) {
				return fmt.Errorf("verify narinfo %s: %s is not above the Signature line, so Guix treats it as unsigned", n.StorePath, f)
			}
		}
		_, sig, err := signing.ParseGuixSignatureField(n.Signatures[0])
		if err != nil {
			return fmt.Errorf("verify narinfo %s: %w", n.StorePath, err)
		}
		if err := signing.VerifyGuix(guixTrusted, body, sig); err != nil {
			return fmt.Errorf("verify narinfo %s: guix signature: %w", n.StorePath, err)
		}
	}
	return nil
}

func hasField(text []byte, key string) bool {
	for _, l := range bytes.Split(text, []byte("\n")) {
		if bytes.HasPrefix(l, []byte(key+":")) {
			return true
		}
	}
	return false
}

// CacheInfo renders nix-cache-info. Nix refuses a cache whose StoreDir
// differs from its own store directory.
func CacheInfo(storeDir string, priority int) []byte {
	return []byte(fmt.Sprintf("StoreDir: %s\nWantMassQuery: 1\nPriority: %d\n", storeDir, priority))
}
