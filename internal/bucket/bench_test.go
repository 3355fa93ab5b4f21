package bucket

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// The 1 GiB benchmarks compare, on the same generated closure and the same
// machine: our publisher (zstd, to MinIO), a plain upload of the same NAR
// bytes (the MinIO ceiling), and `nix copy --to file://…?compression=zstd`
// (Nix's own binary-cache writer, which does not even upload). MB/s comes
// from b.SetBytes (total NAR size); peak-RSS-MiB is the maximum resident
// set of the publishing process (getrusage ru_maxrss of a child process
// running only the publisher; for nix copy, of the nix client), cpu-s/op
// its user + system CPU time (MinIO's and nix-daemon's are not counted),
// zstd-ratio the NAR bytes over the compressed bytes.

const benchChildEnv = "GUIXFARM_BUCKET_BENCH_CHILD"

// benchProfileEnv names a file for the publisher child's CPU profile
// (-cpuprofile profiles only the parent, which merely waits).
const benchProfileEnv = "GUIXFARM_BUCKET_BENCH_CPUPROFILE"

type benchArgs struct {
	Endpoint, Bucket, AccessKey, SecretKey string
	Items                                  []testbed.ClosureItem
	Hashes                                 []string   // NarHash per item, as the daemon's path info gives it
	Refs                                   [][]string // References per item, as the daemon's path info gives them
	Plain                                  bool       // plain PutObject of the NAR, no compression or hashing
	// Socket, when set, is a daemon the child asks for each item's path
	// info (NarHash, References), timed, as an agent does (Hashes and Refs
	// are then ignored).
	Socket string
}

// benchChild publishes the items and prints the compressed total.
func benchChild(arg string) int {
	if f, ok := strings.CutPrefix(arg, "@"); ok { // too long for an environment variable
		data, err := os.ReadFile(f)
		if err != nil {
			fmt.Println("ERR", err)
			return 2
		}
		arg = string(data)
	}
	var a benchArgs
	if err := json.Unmarshal([]byte(arg), &a); err != nil {
		fmt.Println("ERR", err)
		return 2
	}
	if f := os.Getenv(benchProfileEnv); f != "" && !a.Plain {
		out, err := os.Create(f)
		if err == nil && pprof.StartCPUProfile(out) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	ctx := context.Background()
	sk, _ := signing.ParseNixSecretKey(testSecretKey)
	p, err := NewPublisher(Config{Endpoint: a.Endpoint, Bucket: a.Bucket, AccessKey: a.AccessKey, SecretKey: a.SecretKey,
		Keys: signing.Keys{Nix: []signing.NixSecretKey{sk}}})
	if err != nil {
		fmt.Println("ERR", err)
		return 2
	}
	var sizes []uint64 // NarSize per item, when the daemon said
	if a.Socket != "" {
		if a.Hashes, a.Refs, sizes, err = pathInfos(ctx, a.Socket, a.Items); err != nil {
			fmt.Println("ERR", err)
			return 1
		}
	}
	var fileSize uint64
	if !a.Plain {
		// As the agent publishes a build's outputs: the whole closure in
		// one call, NarHash and References from the daemon's path info.
		var items []StoreItem
		for i, it := range a.Items {
			item := DiskItem(it.StorePath, it.Dir)
			item.NarHash = a.Hashes[i]
			item.References = a.Refs[i]
			if sizes != nil {
				item.NarSize = sizes[i]
			}
			items = append(items, item)
		}
		res, err := p.PublishClosure(ctx, items, 0)
		if err != nil {
			fmt.Println("ERR", err)
			return 1
		}
		for _, r := range res {
			fileSize += r.NarInfo.FileSize
		}
	}
	for _, it := range a.Items {
		if !a.Plain {
			break
		}
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(nar.Dump(pw, it.Dir)) }()
		_, err = p.c.PutObject(ctx, a.Bucket, "plain/"+filepath.Base(it.StorePath), pr, -1, minio.PutObjectOptions{
			PartSize: p.cfg.PartSize, NumThreads: uint(p.cfg.Concurrency), ConcurrentStreamParts: true, DisableContentSha256: true})
		if err != nil {
			fmt.Println("ERR", err)
			return 1
		}
	}
	fmt.Println("OK", fileSize)
	return 0
}

func benchClosure(b *testing.B) ([]testbed.ClosureItem, []string, [][]string, int64) {
	b.Helper()
	items := testbed.LargeClosure(b)
	var paths []string
	for _, it := range items {
		paths = append(paths, it.StorePath)
	}
	var total int64
	var hashes []string
	var refs [][]string
	for _, it := range items {
		h := nar.NewHashingWriter()
		scan := nar.NewRefScanner(paths) // what the daemon would have recorded
		if _, err := io.Copy(io.MultiWriter(h, scan), dumpReader(it.Dir)); err != nil {
			b.Fatal(err)
		}
		total += h.Size()
		hashes = append(hashes, h.Sum())
		refs = append(refs, scan.Found())
	}
	return items, hashes, refs, total
}

func dumpReader(dir string) io.Reader {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(nar.Dump(pw, dir)) }()
	return pr
}

// runChild runs the test binary as a publisher and returns its output,
// peak RSS in MiB and CPU seconds (user + system).
func runChild(b *testing.B, a benchArgs) (string, float64, float64) {
	arg, _ := json.Marshal(a)
	if len(arg) > 64<<10 { // Linux refuses an environment string over 128 KiB
		f := filepath.Join(b.TempDir(), "bench-args.json")
		if err := os.WriteFile(f, arg, 0o644); err != nil {
			b.Fatal(err)
		}
		arg = []byte("@" + f)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), benchChildEnv+"="+string(arg))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "OK") {
		b.Fatalf("publisher child: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out)), float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss) / 1024, cpuSeconds(cmd.ProcessState)
}

func cpuSeconds(ps *os.ProcessState) float64 {
	return (ps.UserTime() + ps.SystemTime()).Seconds()
}

func benchUpload(b *testing.B, plain bool) {
	items, hashes, refs, total := benchClosure(b)
	m := testbed.StartMinIO(b)
	var rss, ratio, cpu float64
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		e := newEnvOn(b, m) // a fresh bucket: a republish would be a no-op
		b.StartTimer()
		out, r, c := runChild(b, benchArgs{Endpoint: m.URL, Bucket: e.bucket, AccessKey: m.AccessKey, SecretKey: m.SecretKey, Items: items, Hashes: hashes, Refs: refs, Plain: plain})
		b.StopTimer()
		rss = max(rss, r)
		cpu += c
		var fileSize float64
		fmt.Sscanf(out, "OK %f", &fileSize)
		if fileSize > 0 {
			ratio = float64(total) / fileSize
		}
		for _, it := range items { // free MinIO's disk between iterations
			e.m.Client.RemoveObject(context.Background(), e.bucket, "plain/"+filepath.Base(it.StorePath), minio.RemoveObjectOptions{})
		}
		b.StartTimer()
	}
	b.ReportMetric(rss, "peak-RSS-MiB")
	b.ReportMetric(cpu/float64(b.N), "cpu-s/op")
	if ratio > 0 {
		b.ReportMetric(ratio, "zstd-ratio")
	}
}

// BenchmarkPublishClosure1GiB: Publish of every item of the closure, zstd
// default level, 16 MiB parts, 2 in flight, from files on disk with the
// NarHash known, as the agent has it from the daemon's path info (as nix
// copy has it from its database). Without it, Publish reads each item
// twice (hash, then upload).
func BenchmarkPublishClosure1GiB(b *testing.B) { benchUpload(b, false) }

// BenchmarkPlainUpload1GiB: the same NAR bytes, uncompressed and unhashed,
// through the same multipart PutObject.
func BenchmarkPlainUpload1GiB(b *testing.B) { benchUpload(b, true) }

// BenchmarkNixCopy1GiB: nix copy --to file://DIR?compression=zstd of the
// same closure added to a nix-daemon store (the add is not timed).
func BenchmarkNixCopy1GiB(b *testing.B) {
	items, _, _, total := benchClosure(b)
	d := testbed.StartNixDaemon(b, testbed.NixOptions{NoSandbox: true})
	var paths []string
	for _, it := range items {
		paths = append(paths, d.MustRun(b, "nix-store", "--add", it.Dir))
	}
	var rss, ratio, cpu float64
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := filepath.Join(d.Root, fmt.Sprintf("cache%d", i))
		b.StartTimer()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		cmd := d.Command(ctx, append([]string{"nix", "copy", "--to", "file://" + dir + "?compression=zstd"}, paths...)...)
		out, err := cmd.CombinedOutput()
		cancel()
		b.StopTimer()
		if err != nil {
			b.Fatalf("nix copy: %v\n%s", err, out)
		}
		rss = max(rss, float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss)/1024)
		cpu += cpuSeconds(cmd.ProcessState)
		var fileSize int64
		nars, _ := filepath.Glob(filepath.Join(dir, "nar", "*.nar.zst"))
		for _, n := range nars {
			if fi, err := os.Stat(n); err == nil {
				fileSize += fi.Size()
			}
		}
		if fileSize > 0 {
			ratio = float64(total) / float64(fileSize)
		}
		os.RemoveAll(dir)
		b.StartTimer()
	}
	b.ReportMetric(rss, "peak-RSS-MiB")
	b.ReportMetric(cpu/float64(b.N), "cpu-s/op")
	if ratio > 0 {
		b.ReportMetric(ratio, "zstd-ratio")
	}
}
