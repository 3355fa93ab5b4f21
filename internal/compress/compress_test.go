package compress

import (
	"bytes"
	"crypto/rand"
	"io"
	"os/exec"
	"strings"
	"testing"

	lzipgo "github.com/sorairolake/lzip-go"
)

// semi returns n bytes of semi-compressible data: random runs between
// repeated text.
func semi(n int) []byte {
	var b bytes.Buffer
	r := make([]byte, 64)
	for b.Len() < n {
		rand.Read(r)
		b.Write(r)
		b.WriteString("/gnu/store/b41mr3wb7gk18cs2cy4wqmyps01z8r1z-bbsrc/bin/busybox ")
	}
	return b.Bytes()[:n]
}

func roundTrip(t *testing.T, kind string, level int, in []byte) []byte {
	t.Helper()
	var c bytes.Buffer
	w, err := NewWriter(&c, kind, level)
	if err != nil {
		t.Fatalf("NewWriter(%s, %d): %v", kind, level, err)
	}
	if _, err := io.Copy(w, bytes.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := NewReader(bytes.NewReader(c.Bytes()), kind)
	if err != nil {
		t.Fatalf("NewReader(%s): %v", kind, err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("%s: reading back: %v", kind, err)
	}
	r.Close()
	if !bytes.Equal(in, out) {
		t.Fatalf("%s level %d: round trip of %d bytes gave %d different bytes", kind, level, len(in), len(out))
	}
	return c.Bytes()
}

func TestRoundTrip(t *testing.T) {
	sizes := map[string]int{"empty": 0, "one byte": 1, "small": 1000, "256 KiB": 256 << 10}
	for _, kind := range Kinds() {
		for name, n := range sizes {
			t.Run(kind+"/"+name, func(t *testing.T) {
				in := semi(n)
				for _, level := range []int{0, 1} {
					roundTrip(t, kind, level, in)
				}
			})
		}
	}
}

// TestCLIReads checks each format with the reference tool where installed,
// both ways.
func TestCLIReads(t *testing.T) {
	tools := map[string]string{Zstd: "zstd", Gzip: "gzip", Lzip: "lzip", Xz: "xz"}
	in := semi(300 << 10)
	for kind, tool := range tools {
		t.Run(kind, func(t *testing.T) {
			if _, err := exec.LookPath(tool); err != nil {
				t.Skipf("%s not installed", tool)
			}
			c := roundTrip(t, kind, 0, in)
			cmd := exec.Command(tool, "-dc")
			cmd.Stdin = bytes.NewReader(c)
			out, err := cmd.Output()
			if err != nil || !bytes.Equal(out, in) {
				t.Fatalf("%s -dc of our output: %v (%d bytes)", tool, err, len(out))
			}
			cmd = exec.Command(tool, "-c")
			cmd.Stdin = bytes.NewReader(in)
			theirs, err := cmd.Output()
			if err != nil {
				t.Fatal(err)
			}
			r, err := NewReader(bytes.NewReader(theirs), kind)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, in) {
				t.Fatalf("reading %s -c output: %v", tool, err)
			}
		})
	}
}

// TestLzipInterop checks our streaming lzip against sorairolake/lzip-go.
func TestLzipInterop(t *testing.T) {
	in := semi(200 << 10)
	ours := roundTrip(t, Lzip, 0, in)
	zr, err := lzipgo.NewReader(bytes.NewReader(ours))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	if err != nil || !bytes.Equal(got, in) {
		t.Fatalf("lzip-go reading our output: %v", err)
	}

	var theirs bytes.Buffer
	zw := lzipgo.NewWriter(&theirs)
	zw.Write(in)
	zw.Close()
	// Two members back to back: lzip allows it, and the reader must
	// continue into the second.
	two := append(bytes.Clone(theirs.Bytes()), theirs.Bytes()...)
	r, err := NewReader(bytes.NewReader(two), Lzip)
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(r)
	if err != nil || !bytes.Equal(got, append(bytes.Clone(in), in...)) {
		t.Fatalf("reading two lzip-go members: %v (%d bytes)", err, len(got))
	}
}

func TestCorruptInput(t *testing.T) {
	in := semi(100 << 10)
	for _, kind := range []string{Zstd, Gzip, Lzip, Xz} {
		t.Run(kind, func(t *testing.T) {
			c := roundTrip(t, kind, 0, in)
			cases := map[string][]byte{
				"truncated":  c[:len(c)/2],
				"no trailer": c[:len(c)-4],
			}
			flipped := bytes.Clone(c)
			flipped[len(c)/2] ^= 0x55
			cases["flipped byte"] = flipped
			for name, bad := range cases {
				r, err := NewReader(bytes.NewReader(bad), kind)
				if err == nil {
					var out []byte
					out, err = io.ReadAll(r)
					if err == nil && bytes.Equal(out, in) {
						t.Errorf("%s: corrupt input decoded to the original", name)
					}
				}
				if err == nil {
					t.Errorf("%s: no error", name)
				}
			}
		})
	}
}

// TestLzipStreams checks the writer emits while it is fed, holding at most
// its dictionary (1 MiB at level 1), instead of buffering the whole member
// as lzip-go does.
func TestLzipStreams(t *testing.T) {
	var out countWriter
	w, err := NewWriter(&out, Lzip, 1)
	if err != nil {
		t.Fatal(err)
	}
	in := semi(3 << 20)
	for i := 0; i < len(in); i += 64 << 10 {
		if _, err := w.Write(in[i : i+64<<10]); err != nil {
			t.Fatal(err)
		}
	}
	if out.n < 64<<10 {
		t.Errorf("after 3 MiB of input only %d bytes came out: the writer buffers", out.n)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

type countWriter struct{ n int }

func (c *countWriter) Write(p []byte) (int, error) { c.n += len(p); return len(p), nil }

func TestParseKind(t *testing.T) {
	cases := map[string]struct {
		want    string
		wantErr bool
	}{
		"":      {want: Zstd},
		"zstd":  {want: Zstd},
		"ZST":   {want: Zstd},
		"gzip":  {want: Gzip},
		"lzip":  {want: Lzip},
		"xz":    {want: Xz},
		"none":  {want: None},
		"bzip2": {wantErr: true},
		"zip":   {wantErr: true},
	}
	for in, c := range cases {
		got, err := ParseKind(in)
		if (err != nil) != c.wantErr || got != c.want {
			t.Errorf("ParseKind(%q) = %q, %v; want %q, err %v", in, got, err, c.want, c.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), "gzip, lzip, none, xz, zstd") {
			t.Errorf("ParseKind(%q) error does not list the kinds: %v", in, err)
		}
	}
	if Extension(Zstd) != ".zst" || Extension(None) != "" {
		t.Errorf("extensions: zstd %q none %q", Extension(Zstd), Extension(None))
	}
}

func TestBadLevel(t *testing.T) {
	for kind, level := range map[string]int{Gzip: 42, Lzip: 10, Xz: -2} {
		if _, err := NewWriter(io.Discard, kind, level); err == nil {
			t.Errorf("NewWriter(%s, %d): no error", kind, level)
		}
	}
	if _, err := NewWriter(io.Discard, "brotli", 0); err == nil || !strings.Contains(err.Error(), "zstd") {
		t.Errorf("unknown kind: %v", err)
	}
}
