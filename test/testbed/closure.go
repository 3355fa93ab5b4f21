package testbed

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// ClosureItem is one store item of a generated closure, as files on disk.
type ClosureItem struct {
	StorePath string // a made-up path in StoreDir
	Dir       string // its files
}

// closureVersion names the cache directory: bump it when the generator
// changes so a stale cache is not reused.
const closureVersion = "v1"

// LargeClosure returns a generated closure of two store items totalling
// more than 1 GiB: 24,000 small files (0.5–20 KiB in 96 directories) and
// three 256 MiB files, semi-compressible (zstd ratio ≈ 2–3: random runs
// between text from a small vocabulary, like binaries and docs), the large
// item referring to the small one. It is deterministic and built once, in
// $GUIXFARM_BENCH_CACHE or the system temp dir.
func LargeClosure(tb testing.TB) []ClosureItem {
	tb.Helper()
	root := os.Getenv("GUIXFARM_BENCH_CACHE")
	if root == "" {
		root = os.TempDir()
	}
	root = filepath.Join(root, "guixfarm-bench-closure-"+closureVersion)
	small := ClosureItem{StorePath: StoreDir + "/0j2cnw5d7x5r2i8gqsvi8y8n3n1zl8hx-bench-small-files", Dir: filepath.Join(root, "small")}
	large := ClosureItem{StorePath: StoreDir + "/1k3dqy6f8y6s3j9hrwzj9z9p4p2am9iy-bench-large-files", Dir: filepath.Join(root, "large")}
	items := []ClosureItem{small, large}
	stamp := filepath.Join(root, "complete")
	if _, err := os.Stat(stamp); err == nil {
		return items
	}
	os.RemoveAll(root)
	g := newGen(1)
	for d := 0; d < 96; d++ {
		dir := filepath.Join(small.Dir, "lib", fmt.Sprintf("d%02d", d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			tb.Fatal(err)
		}
		for f := 0; f < 250; f++ {
			size := 512 + g.r.IntN(20<<10-512)
			g.file(tb, filepath.Join(dir, fmt.Sprintf("f%03d.so", f)), int64(size), f%7 == 0)
		}
	}
	if err := os.MkdirAll(filepath.Join(large.Dir, "share"), 0o755); err != nil {
		tb.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		g.file(tb, filepath.Join(large.Dir, "share", fmt.Sprintf("blob%d", i)), 256<<20, false)
	}
	os.WriteFile(filepath.Join(large.Dir, "deps"), []byte(small.StorePath+"/lib\n"), 0o644)
	os.Symlink("share/blob0", filepath.Join(large.Dir, "main"))
	if err := os.WriteFile(stamp, nil, 0o644); err != nil {
		tb.Fatal(err)
	}
	return items
}

type gen struct {
	r     *rand.Rand
	c     *rand.ChaCha8
	words [][]byte
	buf   []byte
}

func newGen(seed uint64) *gen {
	var s [32]byte
	s[0] = byte(seed)
	g := &gen{c: rand.NewChaCha8(s), r: rand.New(rand.NewPCG(seed, 2)), buf: make([]byte, 256)}
	for i := 0; i < 512; i++ {
		w := make([]byte, 3+g.r.IntN(12))
		for j := range w {
			w[j] = "abcdefghijklmnopqrstuvwxyz_/.-0123456789"[g.r.IntN(40)]
		}
		g.words = append(g.words, append(w, ' '))
	}
	return g
}

// file writes size bytes: alternating random runs (~30%) and text.
func (g *gen) file(tb testing.TB, path string, size int64, exec bool) {
	mode := os.FileMode(0o644)
	if exec {
		mode = 0o755
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for n := int64(0); n < size; {
		if g.r.IntN(10) < 3 {
			k := min(int64(16+g.r.IntN(200)), size-n)
			g.c.Read(g.buf[:k])
			w.Write(g.buf[:k])
			n += k
			continue
		}
		for i := 0; i < 8 && n < size; i++ {
			word := g.words[g.r.IntN(len(g.words))]
			k := min(int64(len(word)), size-n)
			w.Write(word[:k])
			n += k
		}
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
}
