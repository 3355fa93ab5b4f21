// Package compress wraps the compressors a substitute bucket uses for
// nars and logs behind one streaming API, with the names narinfo
// "Compression:" fields use and the file extensions of the objects.
//
// Nix 2.8 reads any of them (libarchive detects the format by magic bytes;
// only "none" must be named exactly); Guix reads gzip, lzip, zstd (with
// guile-zstd), xz and none, by the narinfo's Compression name. Both clients
// follow the narinfo URL, so the extension is cosmetic: we use Nix's
// (nar/….nar.zst, .xz, .lzip) and .gz for gzip, which Nix leaves bare.
package compress

import (
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Compression names, as written in a narinfo's Compression field.
const (
	Zstd = "zstd"
	Gzip = "gzip"
	Lzip = "lzip"
	Xz   = "xz"
	None = "none"
)

// Default is the compression used when none is configured: the fastest
// with a good ratio (operators.md §B.5: ≈ 170–195 MiB/s per core, ratio ≈ 2.6).
const Default = Zstd

var extensions = map[string]string{Zstd: ".zst", Gzip: ".gz", Lzip: ".lzip", Xz: ".xz", None: ""}

// Kinds returns the valid compression names, sorted.
func Kinds() []string {
	var ks []string
	for k := range extensions {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// ParseKind returns the canonical compression name for s ("" means
// Default). It accepts the names case-insensitively, and the common
// aliases zst, gz, lz and identity.
func ParseKind(s string) (string, error) {
	k := strings.ToLower(strings.TrimSpace(s))
	switch k {
	case "":
		return Default, nil
	case "zst":
		return Zstd, nil
	case "gz":
		return Gzip, nil
	case "lz":
		return Lzip, nil
	case "identity":
		return None, nil
	}
	if _, ok := extensions[k]; ok {
		return k, nil
	}
	return "", fmt.Errorf("unknown compression %q: use one of %s", s, strings.Join(Kinds(), ", "))
}

// Extension returns the file extension for kind, with its dot ("" for none).
func Extension(kind string) string { return extensions[kind] }

// ContentEncoding is not set on objects: clients must receive the compressed
// bytes as they are (an HTTP client that honours Content-Encoding would
// decompress them before nix does).

// NewWriter returns a writer that compresses to w. Level 0 picks the
// kind's default; otherwise it is the kind's usual scale (zstd 1–22, gzip
// 1–9, lzip and xz 0–9 choose the dictionary size as `lzip -N` does).
// Close flushes the compressor; it does not close w.
func NewWriter(w io.Writer, kind string, level int) (io.WriteCloser, error) {
	switch kind {
	case Zstd:
		lvl := zstd.SpeedDefault
		if level != 0 {
			lvl = zstd.EncoderLevelFromZstd(level)
		}
		// A fixed concurrency keeps the output deterministic across machines
		// and bounds memory (each block encoder holds a window).
		return zstd.NewWriter(w, zstd.WithEncoderLevel(lvl), zstd.WithEncoderConcurrency(min(runtime.GOMAXPROCS(0), 4)))
	case Gzip:
		if level == 0 {
			level = gzip.DefaultCompression
		}
		zw, err := gzip.NewWriterLevel(w, level)
		if err != nil {
			return nil, fmt.Errorf("gzip level %d: %w (use 1–9, or 0 for the default)", level, err)
		}
		return zw, nil
	case Lzip:
		return newLzipWriter(w, level)
	case Xz:
		dict, err := dictSize(level)
		if err != nil {
			return nil, err
		}
		return xz.WriterConfig{DictCap: dict}.NewWriter(w)
	case None:
		return nopCloser{w}, nil
	}
	_, err := ParseKind(kind)
	if err == nil {
		err = fmt.Errorf("compression %q must be canonical: call ParseKind first", kind)
	}
	return nil, err
}

// dictSize maps an lzip/xz level to a dictionary size, as lzip's -0…-9.
func dictSize(level int) (int, error) {
	sizes := []int{64 << 10, 1 << 20, 3 << 19, 2 << 20, 3 << 20, 4 << 20, 8 << 20, 16 << 20, 24 << 20, 32 << 20}
	if level == 0 {
		level = 6
	}
	if level < 0 || level > 9 {
		return 0, fmt.Errorf("compression level %d is out of range: use 0–9 (0 means the default, 6)", level)
	}
	return sizes[level], nil
}

// NewReader returns a reader that decompresses r as kind.
func NewReader(r io.Reader, kind string) (io.ReadCloser, error) {
	switch kind {
	case Zstd:
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(1<<30))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return d.IOReadCloser(), nil
	case Gzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, nil
	case Lzip:
		return newLzipReader(r)
	case Xz:
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		return io.NopCloser(xr), nil
	case None:
		return io.NopCloser(r), nil
	}
	_, err := ParseKind(kind)
	if err == nil {
		err = fmt.Errorf("compression %q must be canonical: call ParseKind first", kind)
	}
	return nil, err
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
