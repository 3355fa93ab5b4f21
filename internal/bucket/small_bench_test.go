package bucket

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/guixfarm/guix-farm/internal/daemon"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// The 1000Small benchmarks compare, on the same 1,000 small store items
// in a nix-daemon's store and the same MinIO: our publisher (one
// PublishClosure call, child process) against `nix copy` to the same
// MinIO through Nix's HTTP binary cache store, which uploads with
// anonymous PUTs to a bench-only bucket. Both also ask the daemon for the
// items' path info (NarHash, References) inside the timed part. ms/op is
// the wall time of one publication of all 1,000 items; items/s is 1,000
// over it.

// smallItems is how many items the 1000Small benchmarks publish.
const smallItems = 1000

// smallClosure adds testbed.AddSmallItems' 1,000 items to d's store (untimed).
func smallClosure(b *testing.B, d *testbed.NixDaemon) []string {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn, err := daemon.Dial(ctx, d.Socket)
	if err != nil {
		b.Fatalf("dialing the daemon: %v", err)
	}
	defer conn.Close()
	return testbed.AddSmallItems(b, smallItems, func(name string, text []byte, refs []string) (string, error) {
		return conn.AddTextToStore(ctx, name, text, refs)
	})
}

// pathInfos asks the daemon at socket for each item's NarHash, References
// and NarSize, on one connection, as an agent does for a build's closure.
func pathInfos(ctx context.Context, socket string, items []testbed.ClosureItem) ([]string, [][]string, []uint64, error) {
	conn, err := daemon.Dial(ctx, socket)
	if err != nil {
		return nil, nil, nil, err
	}
	defer conn.Close()
	hashes := make([]string, len(items))
	refs := make([][]string, len(items))
	sizes := make([]uint64, len(items))
	for i, it := range items {
		info, err := conn.QueryPathInfo(ctx, it.StorePath)
		if err != nil {
			return nil, nil, nil, err
		}
		hashes[i], refs[i], sizes[i] = info.NarHash, info.References, info.NarSize
	}
	return hashes, refs, sizes, nil
}

// BenchmarkPublishClosure1000Small: one PublishClosure call of the 1,000
// items (default parallelism) from their files in the daemon's store, with
// NarHash, NarSize and References from the daemon's path info (queried by
// the publisher process, timed), into a fresh bucket each op.
func BenchmarkPublishClosure1000Small(b *testing.B) {
	d := testbed.StartNixDaemon(b, testbed.NixOptions{NoSandbox: true})
	m := testbed.StartMinIO(b)
	paths := smallClosure(b, d)
	items := make([]testbed.ClosureItem, len(paths))
	for i, p := range paths {
		items[i] = testbed.ClosureItem{StorePath: p, Dir: d.HostPath(p)}
	}
	var rss, cpu float64
	var elapsed time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		e := newEnvOn(b, m) // a fresh bucket: a republish would be a no-op
		b.StartTimer()
		start := time.Now()
		out, r, c := runChild(b, benchArgs{Endpoint: m.URL, Bucket: e.bucket, AccessKey: m.AccessKey, SecretKey: m.SecretKey,
			Items: items, Socket: d.Socket})
		elapsed += time.Since(start)
		b.StopTimer()
		rss, cpu = max(rss, r), cpu+c
		if n := countNarInfos(b, m, e.bucket); n != smallItems {
			b.Fatalf("the bucket has %d narinfos, want %d (%s)", n, smallItems, out)
		}
		b.StartTimer()
	}
	reportSmall(b, elapsed, rss, cpu)
}

// BenchmarkNixCopy1000Small: nix copy --to
// http://MINIO/BUCKET?compression=zstd&secret-key=… of the same 1,000
// paths (the nix client reads them through the daemon), into a fresh
// bucket each op whose policy lets anyone PUT objects (Nix 2.8 has no
// s3:// store here; its HTTP binary cache store uploads with plain PUTs).
func BenchmarkNixCopy1000Small(b *testing.B) {
	d := testbed.StartNixDaemon(b, testbed.NixOptions{NoSandbox: true})
	m := testbed.StartMinIO(b)
	paths := smallClosure(b, d)
	key := filepath.Join(d.Root, "bench-signing.sec") // nix signs too, as our publisher does
	if err := os.WriteFile(key, []byte(testSecretKey), 0o600); err != nil {
		b.Fatal(err)
	}
	var rss, cpu float64
	var elapsed time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		e := newEnvOn(b, m)
		if err := m.Client.SetBucketPolicy(context.Background(), e.bucket, anonymousWritePolicy(e.bucket)); err != nil {
			b.Fatalf("bucket policy: %v", err)
		}
		to := m.BucketURL(e.bucket) + "?compression=zstd&secret-key=" + key
		b.StartTimer()
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		cmd := d.Command(ctx, append([]string{"nix", "copy", "--to", to}, paths...)...)
		out, err := cmd.CombinedOutput()
		cancel()
		elapsed += time.Since(start)
		b.StopTimer()
		if err != nil {
			b.Fatalf("nix copy: %v\n%s", err, out)
		}
		rss = max(rss, float64(cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss)/1024)
		cpu += cpuSeconds(cmd.ProcessState)
		if n := countNarInfos(b, m, e.bucket); n != smallItems {
			b.Fatalf("the bucket has %d narinfos after nix copy, want %d\n%s", n, smallItems, out)
		}
		b.StartTimer()
	}
	reportSmall(b, elapsed, rss, cpu)
}

func reportSmall(b *testing.B, elapsed time.Duration, rss, cpu float64) {
	perOp := elapsed.Seconds() / float64(b.N)
	b.ReportMetric(perOp*1000, "ms/op")
	b.ReportMetric(smallItems/perOp, "items/s")
	b.ReportMetric(rss, "peak-RSS-MiB")
	b.ReportMetric(cpu/float64(b.N), "cpu-s/op")
}

// anonymousWritePolicy is AnonymousReadPolicy plus anonymous PUTs: for a
// bench-only bucket that nix copy's HTTP store writes into.
func anonymousWritePolicy(bucket string) string {
	return fmt.Sprintf(`{"Version":"2012-10-17","Statement":[`+
		`{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject","s3:PutObject"],"Resource":["arn:aws:s3:::%[1]s/*"]},`+
		`{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:ListBucket"],"Resource":["arn:aws:s3:::%[1]s"]}]}`, bucket)
}

// countNarInfos counts the narinfos in a bucket.
func countNarInfos(b *testing.B, m *testbed.MinIO, bucket string) int {
	b.Helper()
	n := 0
	for o := range m.Client.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{}) {
		if o.Err != nil {
			b.Fatalf("listing %s: %v", bucket, o.Err)
		}
		if strings.HasSuffix(o.Key, ".narinfo") {
			n++
		}
	}
	return n
}
