package daemon

import (
	"bufio"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/test/testbed"
)

// The NarExport benchmarks compare, on the same 1 GiB store item of a
// nix-daemon and the same machine, two ways for a process to get the
// item's NAR: through the worker protocol (Conn.Nar: NarFromPath, the
// stream's grammar followed and NarSize checked; CallerHashes, as the
// agent reads it for the publisher, which hashes what it uploads) and
// from `nix-store --dump PATH` (Nix's own serialiser, in the daemon's
// mount namespace) through a pipe. Both are read by the same 1 MiB read
// loop. The item is added once per benchmark, untimed, and read once
// untimed first, so both read from the page cache. MiB/s is the NAR's size
// over the wall time of one read (dial, or process start, included);
// cpu-s/op the reading side's CPU time (ours: this process's; the dump's:
// nix-store's), not the daemon's. sha256-MiB/s is Go's SHA-256 over memory
// on one core: what a Conn.Nar checking NarHash itself is capped at.

// narBenchVersion names the cache directory of the generated item.
const narBenchVersion = "v1"

// narBenchItem returns a directory holding 1 GiB: random/ with two 256 MiB
// files of random bytes (incompressible, like compressed archives and
// media) and text/ with 512 files of 1 MiB of text from a small vocabulary
// (compressible, like sources and docs). Built once, deterministically, in
// $GUIXFARM_BENCH_CACHE or the system temp dir.
func narBenchItem(b *testing.B) string {
	b.Helper()
	root := os.Getenv("GUIXFARM_BENCH_CACHE")
	if root == "" {
		root = os.TempDir()
	}
	root = filepath.Join(root, "guixfarm-bench-nar-"+narBenchVersion)
	dir := filepath.Join(root, "item")
	stamp := filepath.Join(root, "complete")
	if _, err := os.Stat(stamp); err == nil {
		return dir
	}
	os.RemoveAll(root)
	for _, sub := range []string{"random", "text"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	var seed [32]byte
	seed[0] = 42
	c := rand.NewChaCha8(seed)
	for i := range 2 {
		writeBenchFile(b, filepath.Join(dir, "random", "blob"+strconv.Itoa(i)), func(w *bufio.Writer) {
			buf := make([]byte, 1<<20)
			for range 256 {
				c.Read(buf)
				w.Write(buf)
			}
		})
	}
	r := rand.New(rand.NewPCG(42, 1))
	words := strings.Fields("the store item holds files of text lib share doc info man page build " +
		"derivation output path hash reference closure substitute daemon socket worker protocol")
	for i := range 512 {
		writeBenchFile(b, filepath.Join(dir, "text", "doc"+strconv.Itoa(i)+".txt"), func(w *bufio.Writer) {
			for n := 0; n < 1<<20; {
				word := words[r.IntN(len(words))]
				if n+len(word)+1 > 1<<20 {
					w.WriteString(strings.Repeat(".", 1<<20-n))
					break
				}
				w.WriteString(word)
				w.WriteByte(" \n"[min(r.IntN(12), 1)])
				n += len(word) + 1
			}
		})
	}
	if err := os.WriteFile(stamp, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	return dir
}

func writeBenchFile(b *testing.B, path string, fill func(w *bufio.Writer)) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	fill(w)
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}

// narBenchDaemon starts a daemon and adds the 1 GiB item to its store,
// returning the daemon, the store path and its NarSize.
func narBenchDaemon(b *testing.B) (*testbed.NixDaemon, string, uint64) {
	b.Helper()
	dir := narBenchItem(b)
	d := testbed.StartNixDaemon(b, testbed.NixOptions{NoSandbox: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, err := d.Run(ctx, "nix-store", "--add", dir)
	if err != nil {
		b.Fatal(err)
	}
	path := strings.TrimSpace(string(out))
	c, err := Dial(ctx, d.Socket)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	info, err := c.QueryPathInfo(ctx, path)
	if err != nil {
		b.Fatal(err)
	}
	return d, path, info.NarSize
}

func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func reportMiBs(b *testing.B, size uint64, elapsed time.Duration, cpu float64) {
	b.ReportMetric(float64(size)/(1<<20)/(elapsed.Seconds()/float64(b.N)), "MiB/s")
	b.ReportMetric(cpu/float64(b.N), "cpu-s/op")
}

// BenchmarkDaemonNarExport1GiB: Dial, Conn.Nar of the 1 GiB item, read to
// its end (io.Copy to io.Discard), Close.
func BenchmarkDaemonNarExport1GiB(b *testing.B) {
	d, path, size := narBenchDaemon(b)
	read := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		c, err := Dial(ctx, d.Socket)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		r, err := c.Nar(ctx, path, CallerHashes()) // as the agent reads it for the publisher
		if err != nil {
			b.Fatal(err)
		}
		n, err := drain(r)
		if err != nil || uint64(n) != size {
			b.Fatalf("read %d bytes of %d: %v", n, size, err)
		}
		r.Close()
	}
	read() // page cache warm, as for nix-store --dump
	var elapsed time.Duration
	cpu0 := selfCPU()
	b.SetBytes(int64(size))
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		read()
		elapsed += time.Since(start)
	}
	b.StopTimer()
	reportMiBs(b, size, elapsed, selfCPU()-cpu0)
	b.ReportMetric(sha256MiBs(), "sha256-MiB/s")
}

// drain reads r to its end in 1 MiB reads, as the publisher's NAR reader
// does, and counts the bytes. (io.Copy to io.Discard would read in 8 KiB
// pieces: it measures syscalls, not the stream.)
func drain(r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	var n int64
	for {
		k, err := r.Read(buf)
		n += int64(k)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// sha256MiBs is how fast this machine's SHA-256 (Go's, as Conn.Nar's
// NarHash check uses) hashes memory, one core: Conn.Nar cannot read faster.
func sha256MiBs() float64 {
	buf := make([]byte, 64<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	h := sha256.New()
	start := time.Now()
	for range 4 {
		h.Write(buf)
	}
	return 4 * 64 / time.Since(start).Seconds()
}

// BenchmarkNixStoreDump1GiB: nix-store --dump of the same item, in the
// daemon's mount namespace, read from its stdout pipe. (To /dev/null it
// would measure a NAR nobody receives.)
func BenchmarkNixStoreDump1GiB(b *testing.B) {
	d, path, size := narBenchDaemon(b)
	var cpu float64
	dump := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := d.Command(ctx, "nix-store", "--dump", path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		n, err := drain(out)
		if err := cmd.Wait(); err != nil {
			b.Fatalf("nix-store --dump: %v\n%s", err, stderr.String())
		}
		if err != nil || uint64(n) != size {
			b.Fatalf("nix-store --dump: read %d bytes of %d: %v", n, size, err)
		}
		cpu += (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	}
	dump()
	cpu = 0
	var elapsed time.Duration
	b.SetBytes(int64(size))
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		dump()
		elapsed += time.Since(start)
	}
	b.StopTimer()
	reportMiBs(b, size, elapsed, cpu)
}
