package nar

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Vectors from protocols.md §6, generated with `nix-store --dump`.
type vector struct {
	make    func(t *testing.T, dir string) string
	size    int64
	narHash string
}

var vectors = map[string]vector{
	"hello": {
		make: func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "hello.txt")
			write(t, p, "hello\n", 0o644)
			return p
		},
		size:    120,
		narHash: "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
	},
	"empty": {
		make: func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "empty")
			write(t, p, "", 0o644)
			return p
		},
		size:    112,
		narHash: "sha256:0ip26j2h11n1kgkz36rl4akv694yz65hr72q4kv4b3lxcbi65b3p",
	},
	"directory with symlink and executable": {
		make:    makeTree,
		size:    888,
		narHash: "sha256:1slvakab204d76krg1s089cz0xvxxgg7ab4impa7mjr5h3fs1yc6",
	},
}

func write(t *testing.T, p, s string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // umask-proof
		t.Fatal(err)
	}
}

func makeTree(t *testing.T, dir string) string {
	d := filepath.Join(dir, "d")
	write(t, filepath.Join(d, "a"), "hello\n", 0o644)
	write(t, filepath.Join(d, "sub", "run.sh"), "#!/bin/sh\necho hi\n", 0o755)
	if err := os.Symlink("a", filepath.Join(d, "link")); err != nil {
		t.Fatal(err)
	}
	return d
}

func dump(t *testing.T, p string) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Dump(&b, p); err != nil {
		t.Fatalf("Dump(%s): %v", p, err)
	}
	return b.Bytes()
}

func TestDumpVectors(t *testing.T) {
	for name, v := range vectors {
		t.Run(name, func(t *testing.T) {
			p := v.make(t, t.TempDir())
			b := dump(t, p)
			h, n, err := Hash(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if n != v.size || h != v.narHash {
				t.Errorf("Dump: got %d bytes %s, want %d bytes %s", n, h, v.size, v.narHash)
			}
			size, err := Validate(bytes.NewReader(b))
			if err != nil || size != v.size {
				t.Errorf("Validate = %d, %v; want %d, nil", size, err, v.size)
			}
		})
	}
}

// TestDumpMatchesNix compares Dump with the real `nix-store --dump` on a
// tree with nested directories, odd sizes, an empty directory and names
// whose byte order differs from other orders.
func TestDumpMatchesNix(t *testing.T) {
	if _, err := exec.LookPath("nix-store"); err != nil {
		t.Skip("nix-store not installed (hack/tools.sh nix)")
	}
	d := filepath.Join(t.TempDir(), "tree")
	for i, name := range []string{"B", "a", "a-b", "a.b", "a/x", "a/y/z", "é", "big"} {
		size := i * 37
		if name == "big" {
			size = 3<<20 + 5
		}
		buf := make([]byte, size)
		rand.Read(buf)
		write(t, filepath.Join(d, name+"_f"), string(buf), os.FileMode(0o644|(i%2)*0o111))
	}
	os.MkdirAll(filepath.Join(d, "emptydir"), 0o755)
	os.Symlink("/gnu/store/nowhere", filepath.Join(d, "abs-link"))
	want, err := exec.Command("nix-store", "--dump", d).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := dump(t, d)
	if !bytes.Equal(got, want) {
		t.Fatalf("Dump differs from nix-store --dump (%d vs %d bytes)", len(got), len(want))
	}
}

func TestReaderWalk(t *testing.T) {
	b := dump(t, makeTree(t, t.TempDir()))
	r := NewReader(bytes.NewReader(b))
	var got []Header
	contents := map[string]string{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Type == TypeRegular {
			c, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			contents[h.Path] = string(c)
		}
		got = append(got, *h)
	}
	want := []Header{
		{Path: "/", Type: TypeDirectory},
		{Path: "/a", Type: TypeRegular, Size: 6},
		{Path: "/link", Type: TypeSymlink, LinkTarget: "a"},
		{Path: "/sub", Type: TypeDirectory},
		{Path: "/sub/run.sh", Type: TypeRegular, Executable: true, Size: 18},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("headers (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string]string{"/a": "hello\n", "/sub/run.sh": "#!/bin/sh\necho hi\n"}, contents); d != "" {
		t.Errorf("contents (-want +got):\n%s", d)
	}
	if r.Size() != 888 {
		t.Errorf("Size = %d, want 888", r.Size())
	}
}

// tokens builds NAR tokens for hand-made corrupt archives.
func tokens(toks ...string) []byte {
	var b bytes.Buffer
	for _, s := range toks {
		binary.Write(&b, binary.LittleEndian, uint64(len(s)))
		b.WriteString(s)
		b.Write(make([]byte, (8-len(s)%8)%8))
	}
	return b.Bytes()
}

func TestValidateCorrupt(t *testing.T) {
	good := dump(t, makeTree(t, t.TempDir()))
	flip := bytes.Clone(good)
	flip[20] ^= 0xff // inside "nix-archive-1"
	badPad := bytes.Clone(good)
	badPad[8+13] = 1 // padding after "nix-archive-1"
	cases := map[string][]byte{
		"empty input":          nil,
		"truncated in file":    good[:200],
		"truncated at end":     good[:len(good)-8],
		"bad magic":            flip,
		"non-zero padding":     badPad,
		"trailing data":        append(bytes.Clone(good), tokens("x")...),
		"unsorted entries":     tokens("nix-archive-1", "(", "type", "directory", "entry", "(", "name", "b", "node", "(", "type", "symlink", "target", "x", ")", ")", "entry", "(", "name", "a", "node", "(", "type", "symlink", "target", "x", ")", ")", ")"),
		"duplicate entries":    tokens("nix-archive-1", "(", "type", "directory", "entry", "(", "name", "a", "node", "(", "type", "symlink", "target", "x", ")", ")", "entry", "(", "name", "a", "node", "(", "type", "symlink", "target", "x", ")", ")", ")"),
		"slash in name":        tokens("nix-archive-1", "(", "type", "directory", "entry", "(", "name", "a/b", "node", "(", "type", "symlink", "target", "x", ")", ")", ")"),
		"dot-dot name":         tokens("nix-archive-1", "(", "type", "directory", "entry", "(", "name", "..", "node", "(", "type", "symlink", "target", "x", ")", ")", ")"),
		"unknown type":         tokens("nix-archive-1", "(", "type", "fifo", ")"),
		"huge token length":    append(tokens("nix-archive-1", "("), 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0),
		"missing close paren":  tokens("nix-archive-1", "(", "type", "symlink", "target", "x"),
		"contents keyword bad": tokens("nix-archive-1", "(", "type", "regular", "content", ""),
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Validate(bytes.NewReader(in))
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Validate: got %v, want an ErrCorrupt", err)
			}
		})
	}
}

func TestReadSingleFile(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]struct {
		path    string
		max     int64
		want    string
		wantErr bool
	}{
		"regular file": {path: vectors["hello"].make(t, dir), max: 100, want: "hello\n"},
		"too large":    {path: vectors["hello"].make(t, dir), max: 3, wantErr: true},
		"directory":    {path: makeTree(t, dir), max: 100, wantErr: true},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := ReadSingleFile(bytes.NewReader(dump(t, c.path)), c.max)
			if (err != nil) != c.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, c.wantErr)
			}
			if !c.wantErr && string(got) != c.want {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}

func TestReferences(t *testing.T) {
	const (
		bb   = "/gnu/store/b41mr3wb7gk18cs2cy4wqmyps01z8r1z-bbsrc"
		self = "/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt"
		none = "/gnu/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools"
	)
	d := filepath.Join(t.TempDir(), "out")
	write(t, filepath.Join(d, "bin", "run"), "#!"+bb+"/bin/busybox sh\n", 0o755)
	os.Symlink(self+"/x", filepath.Join(d, "selflink"))
	cands := []string{none, self, bb}

	got, err := References(bytes.NewReader(dump(t, d)), cands)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{bb, self}, got); d != "" {
		t.Errorf("References (-want +got):\n%s", d)
	}

	// Matches that straddle every possible write boundary.
	b := dump(t, d)
	for cut := 1; cut < len(b); cut += 7 {
		s := NewRefScanner(cands)
		for i := 0; i < len(b); i += cut {
			s.Write(b[i:min(i+cut, len(b))])
		}
		if d := cmp.Diff([]string{bb, self}, s.Found()); d != "" {
			t.Fatalf("chunk %d (-want +got):\n%s", cut, d)
		}
	}
}

func TestHashPart(t *testing.T) {
	cases := map[string]string{
		"/gnu/store/b41mr3wb7gk18cs2cy4wqmyps01z8r1z-bbsrc": "b41mr3wb7gk18cs2cy4wqmyps01z8r1z",
		"b41mr3wb7gk18cs2cy4wqmyps01z8r1z-bbsrc":            "b41mr3wb7gk18cs2cy4wqmyps01z8r1z",
		"/gnu/store/short":                                  "",
		"/gnu/store/e41mr3wb7gk18cs2cy4wqmyps01z8r1z-bbsrc": "", // 'e' is not nixbase32
	}
	for in, want := range cases {
		if got := HashPart(in); got != want {
			t.Errorf("HashPart(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestDumpStreams checks Dump's memory does not grow with file size.
func TestDumpStreams(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big")
	f, _ := os.Create(p)
	f.Truncate(64 << 20) // sparse: no disk needed
	f.Close()
	hw := NewHashingWriter()
	allocs := testing.AllocsPerRun(1, func() {
		if err := Dump(hw, p); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 100 {
		t.Errorf("Dump of a 64 MiB file made %v allocations", allocs)
	}
}
