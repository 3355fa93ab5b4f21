package nar

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// chunkReader reads at most n bytes per call, to exercise every boundary.
type chunkReader struct {
	r io.Reader
	n int
}

func (c chunkReader) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

// TestDumpReaderMatchesDump: the same bytes as Dump, whatever the size of
// the caller's reads.
func TestDumpReaderMatchesDump(t *testing.T) {
	dir := t.TempDir()
	roots := map[string]string{}
	for name, v := range vectors {
		roots[name] = v.make(t, filepath.Join(dir, strings.ReplaceAll(name, " ", "_")))
	}
	big := filepath.Join(dir, "big")
	for i, name := range []string{"B", "a", "a-b", "a.b", "a/x", "a/y/z", "é", "blob"} {
		buf := make([]byte, i*37+(i/7)*(300<<10)) // one file of several 256 KiB reads
		rand.Read(buf)
		write(t, filepath.Join(big, name+"_f"), string(buf), os.FileMode(0o644|(i%2)*0o111))
	}
	os.MkdirAll(filepath.Join(big, "emptydir", "empty2"), 0o755)
	os.Symlink("/gnu/store/nowhere", filepath.Join(big, "abs-link"))
	os.Symlink("a", filepath.Join(dir, "rootlink"))
	roots["tree"], roots["symlink root"] = big, filepath.Join(dir, "rootlink")
	for name, root := range roots {
		want := dump(t, root)
		for _, n := range []int{1, 7, 4096, 1 << 20} {
			r := NewDumpReader(root)
			got, err := io.ReadAll(chunkReader{r, n})
			r.Close()
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s, reads of %d: %d bytes, %v; Dump gives %d bytes", name, n, len(got), err, len(want))
			}
		}
	}
}

func TestDumpReaderErrors(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo", "p")
	os.MkdirAll(filepath.Dir(fifo), 0o755)
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	shrink := filepath.Join(dir, "shrink")
	write(t, shrink, strings.Repeat("x", 1<<20), 0o644)
	cases := map[string]struct {
		root   string
		during func()
		want   string
	}{
		"missing":   {root: filepath.Join(dir, "nope"), want: "no such file"},
		"fifo":      {root: filepath.Dir(fifo), want: "may only hold regular files"},
		"shrinking": {root: shrink, during: func() { os.Truncate(shrink, 10) }, want: "shrank from 1048576"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			r := NewDumpReader(c.root)
			defer r.Close()
			buf := make([]byte, 200)
			var err error
			for err == nil {
				_, err = r.Read(buf)
				if c.during != nil {
					c.during()
					c.during = nil
				}
			}
			if err == io.EOF || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want %q", err, c.want)
			}
		})
	}
}
