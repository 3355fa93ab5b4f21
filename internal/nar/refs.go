package nar

import (
	"io"
	"path"
	"sort"
	"strings"
)

// hashLen is the length of a store path's hash part (160 bits, nixbase32).
const hashLen = 32

// isBase32 marks the bytes of Nix's base32 alphabet (no e, o, t, u).
var isBase32 = func() (t [256]bool) {
	for _, c := range "0123456789abcdfghijklmnpqrsvwxyz" {
		t[c] = true
	}
	return t
}()

// RefScanner is an io.Writer that looks for the hash parts of candidate
// store paths in what is written to it, as Nix's reference scanner does on
// the NAR serialisation. Matches across Write boundaries are found.
type RefScanner struct {
	want  map[string][]string // hash part -> candidates as given
	found map[string]bool
	tail  []byte // last hashLen-1 bytes of the previous write
}

// NewRefScanner scans for the given candidates, store paths
// ("/gnu/store/<hash>-name") or base names ("<hash>-name").
func NewRefScanner(candidates []string) *RefScanner {
	s := &RefScanner{want: map[string][]string{}, found: map[string]bool{}}
	for _, c := range candidates {
		base := path.Base(c)
		if len(base) < hashLen {
			continue
		}
		h := base[:hashLen]
		s.want[h] = append(s.want[h], c)
	}
	return s
}

// Write scans p; it never fails.
func (s *RefScanner) Write(p []byte) (int, error) {
	if len(s.want) == len(s.found) {
		return len(p), nil
	}
	if len(s.tail) > 0 {
		// Join the boundary: the tail plus the first hashLen-1 bytes of p.
		j := append(s.tail, p[:min(len(p), hashLen-1)]...)
		s.scan(j)
	}
	s.scan(p)
	if len(p) >= hashLen-1 {
		s.tail = append(s.tail[:0], p[len(p)-(hashLen-1):]...)
	} else {
		s.tail = append(s.tail, p...)
		if len(s.tail) > hashLen-1 {
			s.tail = s.tail[len(s.tail)-(hashLen-1):]
		}
	}
	return len(p), nil
}

// scan checks every window of hashLen base32 bytes, skipping ahead past any
// byte outside the alphabet (as Nix's search does).
func (s *RefScanner) scan(b []byte) {
	for i := 0; i+hashLen <= len(b); {
		j := hashLen - 1
		for j >= 0 && isBase32[b[i+j]] {
			j--
		}
		if j >= 0 {
			i += j + 1
			continue
		}
		h := string(b[i : i+hashLen])
		if _, ok := s.want[h]; ok {
			s.found[h] = true
		}
		i++
	}
}

// Found returns the candidates whose hash part was seen, sorted.
func (s *RefScanner) Found() []string {
	var out []string
	for h := range s.found {
		out = append(out, s.want[h]...)
	}
	sort.Strings(out)
	return out
}

// References reads r (a NAR) to the end and returns the candidates (store
// paths or base names) whose hash part occurs in it, sorted.
func References(r io.Reader, candidates []string) ([]string, error) {
	s := NewRefScanner(candidates)
	if _, err := io.Copy(s, r); err != nil {
		return nil, err
	}
	return s.Found(), nil
}

// HashPart returns the 32-character hash part of a store path or base name,
// or "" when it has none.
func HashPart(storePath string) string {
	base := path.Base(storePath)
	if len(base) < hashLen+1 || base[hashLen] != '-' || strings.IndexFunc(base[:hashLen], func(r rune) bool { return r > 255 || !isBase32[r] }) >= 0 {
		return ""
	}
	return base[:hashLen]
}
