package bucket

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/minio/minio-go/v7"

	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/narinfo"
	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/internal/storepath"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// The throwaway farm key of protocols.md §6 N3 (test use only).
const (
	testSecretKey = "farm-test-1:hY9VwhCbTTUMtCKPZ66fxtpzWKbm7WYxW+KBw1zYL/EILNh1gFX05Q4YERPw/gOC6PSZ59h5XJ4ueFTt9qsnqw=="
	testPublicKey = "farm-test-1:CCzYdYBV9OUOGBET8P4Dguj0mefYeVyeLnhU7farJ6s="
)

func testKeys(t testing.TB) signing.Keys {
	sk, err := signing.ParseNixSecretKey(testSecretKey)
	if err != nil {
		t.Fatal(err)
	}
	return signing.Keys{Nix: []signing.NixSecretKey{sk}, Host: "farm-test"}
}

// otherKey returns a fresh Nix key pair no client trusts.
func otherKey(t testing.TB) (secret, public string) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	return "other-1:" + base64.StdEncoding.EncodeToString(priv), "other-1:" + base64.StdEncoding.EncodeToString(pub)
}

func noSleep(context.Context, time.Duration) error { return nil }

type env struct {
	m      *testbed.MinIO
	bucket string
	cfg    Config
	pub    *Publisher
}

var bucketSeq atomic.Int32

// newEnv starts MinIO (one per test) and a ready bucket.
func newEnv(t testing.TB) *env {
	t.Helper()
	m := testbed.StartMinIO(t)
	return newEnvOn(t, m)
}

func newEnvOn(t testing.TB, m *testbed.MinIO) *env {
	t.Helper()
	e := &env{m: m, bucket: fmt.Sprintf("cache%d", bucketSeq.Add(1))}
	e.cfg = Config{
		Endpoint: m.URL, Bucket: e.bucket, AccessKey: m.AccessKey, SecretKey: m.SecretKey,
		Keys: testKeys(t), Retry: Backoff{Sleep: noSleep},
	}
	var err error
	if e.pub, err = NewPublisher(e.cfg); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := e.pub.EnsureBucket(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.pub.EnsureCacheInfo(ctx); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) url(key string) string { return e.m.BucketURL(e.bucket) + "/" + key }

func (e *env) objects(t testing.TB) []string {
	var keys []string
	for o := range e.m.Client.ListObjects(context.Background(), e.bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		keys = append(keys, o.Key)
	}
	return keys
}

// tree makes a small store item on disk and returns its directory.
func tree(t testing.TB, content string) string {
	d := filepath.Join(t.TempDir(), "item")
	os.MkdirAll(filepath.Join(d, "bin"), 0o755)
	os.WriteFile(filepath.Join(d, "bin", "hello"), []byte("#!/bin/sh\necho "+content+"\n"), 0o755)
	os.Symlink("bin/hello", filepath.Join(d, "run"))
	return d
}

func file(t testing.TB, content string) string {
	p := filepath.Join(t.TempDir(), "file")
	os.WriteFile(p, []byte(content), 0o644)
	return p
}

// demoDrv is the derivation at drvPath; its output is outPath.
const demoDrv = `Derive([("out","/gnu/store/b0hs05w9rzk5r6zrg7dmhjn2950lz9yz-demo","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo hi > $out"],[("builder","/bin/sh"),("name","demo"),("out","/gnu/store/b0hs05w9rzk5r6zrg7dmhjn2950lz9yz-demo"),("system","x86_64-linux")])`

const (
	helloPath = "/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt"
	outPath   = "/gnu/store/b0hs05w9rzk5r6zrg7dmhjn2950lz9yz-demo"
	drvPath   = "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv"
)

func TestPublishAndRead(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()

	// The §6 vector: hello.txt, 120-byte NAR.
	res, err := e.pub.Publish(ctx, DiskItem(helloPath, file(t, "hello\n")))
	if err != nil {
		t.Fatal(err)
	}
	ni := res.NarInfo
	if ni.NarHash != "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw" || ni.NarSize != 120 {
		t.Errorf("NarHash/NarSize = %s/%d", ni.NarHash, ni.NarSize)
	}
	if want := "nar/zstd/04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw.nar.zst"; res.NarKey != want || ni.URL != want {
		t.Errorf("nar key %q, URL %q, want %q", res.NarKey, ni.URL, want)
	}
	pk, _ := signing.ParseNixPublicKey(testPublicKey)
	if err := ni.Verify([]signing.NixPublicKey{pk}, nil); err != nil {
		t.Errorf("signature: %v", err)
	}

	// Anonymous HTTP, as clients see it.
	code, body := e.m.Get(t, e.url("mai503rgk7jq72577x5iwgyc5izfvp9i.narinfo"))
	if code != 200 || !strings.Contains(body, "StorePath: "+helloPath+"\n") || !strings.Contains(body, "References: \n") {
		t.Errorf("anonymous narinfo GET: %d %q", code, body)
	}
	if code, body = e.m.Get(t, e.url("nix-cache-info")); code != 200 || body != "StoreDir: /gnu/store\nWantMassQuery: 1\nPriority: 40\n" {
		t.Errorf("nix-cache-info: %d %q", code, body)
	}
	for _, missing := range []string{"00000000000000000000000000000000.narinfo", "nar/zstd/nothing.nar.zst", "log/nothing.drv"} {
		if code, _ := e.m.Get(t, e.url(missing)); code != http.StatusNotFound {
			t.Errorf("anonymous GET of missing %s: %d, want 404", missing, code)
		}
	}

	r, err := NewReader(Config{Endpoint: e.m.URL, Bucket: e.bucket}, ReaderOptions{TrustedNixKeys: []signing.NixPublicKey{pk}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadFile(ctx, helloPath)
	if err != nil || string(got) != "hello\n" {
		t.Errorf("ReadFile = %q, %v", got, err)
	}
	if ok, err := r.Has(ctx, helloPath); !ok || err != nil {
		t.Errorf("Has(present) = %v, %v", ok, err)
	}
	if ok, err := r.Has(ctx, outPath); ok || err != nil {
		t.Errorf("Has(absent) = %v, %v", ok, err)
	}
	if _, err := r.NarInfo(ctx, outPath); !errors.Is(err, ErrNotFound) {
		t.Errorf("NarInfo(absent): %v, want ErrNotFound", err)
	}

	// A .drv through the controller's interface.
	drv := demoDrv
	if _, err := e.pub.Publish(ctx, DiskItem(drvPath, file(t, drv))); err != nil {
		t.Fatal(err)
	}
	var src interface {
		Read(ctx context.Context, drvPath string) ([]byte, error)
	} = r
	if got, err := src.Read(ctx, drvPath); err != nil || string(got) != drv {
		t.Errorf("Read(drv) = %q, %v", got, err)
	}
	// A directory is not a file.
	if _, err := e.pub.Publish(ctx, DiskItem(outPath, tree(t, "x"))); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadFile(ctx, outPath); err == nil {
		t.Error("ReadFile of a directory item: no error")
	}
}

// TestHasCache checks the TTLs with an injected clock.
func TestHasCache(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	now := time.Unix(1000, 0)
	r, err := NewReader(e.cfg, ReaderOptions{PositiveTTL: time.Minute, NegativeTTL: time.Second, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := r.Has(ctx, helloPath); ok {
		t.Fatal("present before publishing")
	}
	if _, err := e.pub.Publish(ctx, DiskItem(helloPath, file(t, "hello\n"))); err != nil {
		t.Fatal(err)
	}
	if ok, _ := r.Has(ctx, helloPath); ok {
		t.Error("negative answer not cached")
	}
	now = now.Add(2 * time.Second)
	if ok, _ := r.Has(ctx, helloPath); !ok {
		t.Error("negative answer cached past its TTL")
	}
	e.m.Client.RemoveObject(ctx, e.bucket, "mai503rgk7jq72577x5iwgyc5izfvp9i.narinfo", minio.RemoveObjectOptions{})
	now = now.Add(30 * time.Second)
	if ok, _ := r.Has(ctx, helloPath); !ok {
		t.Error("positive answer not cached")
	}
	now = now.Add(time.Minute)
	if ok, _ := r.Has(ctx, helloPath); ok {
		t.Error("positive answer cached past its TTL")
	}
}

func TestPublishIdempotent(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	dir := tree(t, "same")
	first, err := e.pub.Publish(ctx, DiskItem(outPath, dir))
	if err != nil {
		t.Fatal(err)
	}
	before := e.objects(t)
	info, _ := e.m.Client.StatObject(ctx, e.bucket, first.NarKey, minio.StatObjectOptions{})

	// With and without a known NarHash: no upload at all.
	item := DiskItem(outPath, dir)
	for _, h := range []string{"", first.NarInfo.NarHash} {
		item.NarHash = h
		again, err := e.pub.Publish(ctx, item)
		if err != nil || !again.AlreadyPresent {
			t.Fatalf("second publish (NarHash %q): %+v, %v", h, again, err)
		}
	}
	if d := cmp.Diff(before, e.objects(t)); d != "" {
		t.Errorf("objects changed (-before +after):\n%s", d)
	}
	if info2, _ := e.m.Client.StatObject(ctx, e.bucket, first.NarKey, minio.StatObjectOptions{}); !info2.LastModified.Equal(info.LastModified) {
		t.Error("the nar was rewritten")
	}
}

func TestNotReproducible(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first, err := e.pub.Publish(ctx, DiskItem(outPath, tree(t, "one")))
	if err != nil {
		t.Fatal(err)
	}
	_, body := e.m.Get(t, e.url(first.NarInfoKey))
	_, err = e.pub.Publish(ctx, DiskItem(outPath, tree(t, "two")))
	var nr *NotReproducibleError
	if !errors.Is(err, ErrNotReproducible) || !errors.As(err, &nr) {
		t.Fatalf("got %v, want a NotReproducibleError", err)
	}
	if nr.Published != first.NarInfo.NarHash || nr.Local == nr.Published || !strings.Contains(err.Error(), nr.Local) || !strings.Contains(err.Error(), nr.Published) {
		t.Errorf("error does not name both hashes: %v", err)
	}
	if _, after := e.m.Get(t, e.url(first.NarInfoKey)); after != body {
		t.Error("the narinfo was overwritten")
	}
	// The same item as an input of a publication (another build's output, built twice): the
	// published copy stands and nothing fails.
	input := DiskItem(outPath, tree(t, "two"))
	input.Input = true
	res, err := e.pub.Publish(ctx, input)
	if err != nil || !res.AlreadyPresent || res.NarInfo.NarHash != first.NarInfo.NarHash {
		t.Errorf("an input with another NarHash: %+v, %v; want AlreadyPresent with the published NarHash", res, err)
	}
	if _, after := e.m.Get(t, e.url(first.NarInfoKey)); after != body {
		t.Error("the narinfo was overwritten by an input")
	}
}

// readerItem serves fixed NAR bytes, as a daemon's NarFromPath would.
func readerItem(storePath string, data []byte) StoreItem {
	return StoreItem{StorePath: storePath, Open: func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}}
}

func dumpBytes(t testing.TB, p string) []byte {
	var b bytes.Buffer
	if err := nar.Dump(&b, p); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func bigTree(t testing.TB) string {
	d := filepath.Join(t.TempDir(), "big")
	os.MkdirAll(d, 0o755)
	buf := make([]byte, 12<<20) // incompressible: more than two parts
	rand.Read(buf)
	os.WriteFile(filepath.Join(d, "blob"), buf, 0o644)
	return d
}

// TestBadNarNothingPublished: corrupt, truncated or mis-hashed NAR streams
// fail before anything is stored, on the single-PUT and multipart paths.
func TestBadNarNothingPublished(t *testing.T) {
	e := newEnv(t)
	e.pub.cfg.PartSize = minPartSize
	ctx := context.Background()
	small := dumpBytes(t, tree(t, "small"))
	big := dumpBytes(t, bigTree(t))
	smallHash, _, _ := nar.Hash(bytes.NewReader(small))
	bigHash, _, _ := nar.Hash(bytes.NewReader(big))
	corrupt := bytes.Clone(big)
	corrupt[len(corrupt)-30] ^= 1 // inside the final tokens
	cases := map[string]struct {
		item    StoreItem
		corrupt bool
	}{
		"small truncated":              {item: readerItem(outPath, small[:len(small)-16]), corrupt: true},
		"big truncated":                {item: readerItem(outPath, big[:len(big)-16]), corrupt: true},
		"big corrupt":                  {item: readerItem(outPath, corrupt), corrupt: true},
		"small wrong NarHash":          {item: withHash(readerItem(outPath, small), bigHash)},
		"big wrong NarHash":            {item: withHash(readerItem(outPath, big), smallHash)},
		"big truncated, hash known":    {item: withHash(readerItem(outPath, big[:len(big)-16]), bigHash), corrupt: true},
		"small trailing garbage, hash": {item: withHash(readerItem(outPath, append(bytes.Clone(small), 0)), smallHash), corrupt: true},
	}
	before := e.objects(t)
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := e.pub.Publish(ctx, c.item)
			if err == nil {
				t.Fatal("no error")
			}
			if c.corrupt != errors.Is(err, nar.ErrCorrupt) || !strings.Contains(err.Error(), outPath) {
				t.Errorf("error %v: corrupt %v", err, c.corrupt)
			}
			if d := cmp.Diff(before, e.objects(t)); d != "" {
				t.Errorf("objects appeared (-before +after):\n%s", d)
			}
		})
	}
	// Incomplete multipart uploads were aborted, not left behind.
	for u := range e.m.Client.ListIncompleteUploads(ctx, e.bucket, "", true) {
		t.Errorf("incomplete upload left: %s", u.Key)
	}
}

func withHash(it StoreItem, h string) StoreItem { it.NarHash = h; return it }

// TestMultipartRoundTrip publishes an item larger than a part through the
// daemon-stream path (NarHash known, hex as the daemon reports it) and
// reads it back byte for byte.
func TestMultipartRoundTrip(t *testing.T) {
	e := newEnv(t)
	e.pub.cfg.PartSize = minPartSize
	ctx := context.Background()
	dir := bigTree(t)
	os.WriteFile(filepath.Join(dir, "refs"), []byte("uses "+helloPath+" and "+drvPath), 0o644)
	data := dumpBytes(t, dir)
	hw := nar.NewHashingWriter()
	hw.Write(data)
	item := readerItem(outPath, data)
	item.NarHash = fmt.Sprintf("%x", hw.SumBytes())
	item.ScanReferences = []string{helloPath, drvPath, outPath, "/gnu/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools"}
	item.Deriver = drvPath
	// What the scan finds must be in the bucket first.
	for p, content := range map[string]string{helloPath: "hello\n", drvPath: demoDrv} {
		if _, err := e.pub.Publish(ctx, DiskItem(p, file(t, content))); err != nil {
			t.Fatal(err)
		}
	}
	res, err := e.pub.Publish(ctx, item)
	if err != nil {
		t.Fatal(err)
	}
	if res.NarInfo.NarHash != hw.Sum() || res.NarInfo.Deriver != "5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv" {
		t.Errorf("narinfo %+v", res.NarInfo)
	}
	if d := cmp.Diff([]string{"5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv", "mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt"}, res.NarInfo.References); d != "" {
		t.Errorf("scanned references (-want +got):\n%s", d)
	}
	obj, err := e.m.Client.GetObject(ctx, e.bucket, res.NarKey, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h, size, err := nar.Hash(obj)
	if err != nil || h != res.NarInfo.FileHash || uint64(size) != res.NarInfo.FileSize {
		t.Errorf("stored nar %s/%d, narinfo %s/%d (%v)", h, size, res.NarInfo.FileHash, res.NarInfo.FileSize, err)
	}
}

func TestEveryCompression(t *testing.T) {
	m := testbed.StartMinIO(t)
	ctx := context.Background()
	drv := demoDrv // Read checks that the content is the .drv at drvPath
	for _, kind := range []string{"zstd", "gzip", "lzip", "xz", "none"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnvOn(t, m)
			e.pub.cfg.Compression = kind
			res, err := e.pub.Publish(ctx, DiskItem(drvPath, file(t, drv)))
			if err != nil {
				t.Fatal(err)
			}
			if res.NarInfo.Compression != kind || !strings.HasPrefix(res.NarKey, "nar/"+kind+"/") {
				t.Errorf("compression %q key %q", res.NarInfo.Compression, res.NarKey)
			}
			r, _ := NewReader(e.cfg, ReaderOptions{})
			if got, err := r.Read(ctx, drvPath); err != nil || string(got) != drv {
				t.Errorf("Read = %q, %v", got, err)
			}
		})
	}
}

func TestPublishLog(t *testing.T) {
	e := newEnv(t)
	logText := strings.Repeat("building...\n", 1000)
	if err := e.pub.PublishLog(context.Background(), drvPath, strings.NewReader(logText)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(e.url("log/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body) // Go's client undoes Content-Encoding: gzip
	if resp.StatusCode != 200 || string(body) != logText || !resp.Uncompressed {
		t.Errorf("log GET: %d, %d bytes, decompressed by the client: %v", resp.StatusCode, len(body), resp.Uncompressed)
	}
	if err := e.pub.PublishLog(context.Background(), outPath, strings.NewReader("x")); err == nil {
		t.Error("PublishLog of a non-.drv path: no error")
	}
}

// TestMissingKeyPolicy records what MinIO answers an anonymous GET of a
// missing key under each policy: ours must give 404 (Guix treats 403 as a
// transient error).
func TestMissingKeyPolicy(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	getOnly := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::%s/*"]}]}`, e.bucket)
	cases := map[string]struct {
		policy string
		want   int // 0: only recorded
	}{
		"GetObject + ListBucket (ours)": {policy: AnonymousReadPolicy(e.bucket), want: 404},
		"GetObject only":                {policy: getOnly},
		"no policy":                     {policy: "", want: 403},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if err := e.m.Client.SetBucketPolicy(ctx, e.bucket, c.policy); err != nil {
				t.Fatal(err)
			}
			code, _ := e.m.Get(t, e.url("00000000000000000000000000000000.narinfo"))
			t.Logf("policy %s: anonymous GET of a missing key answers %d", name, code)
			if c.want != 0 && code != c.want {
				t.Errorf("got %d, want %d", code, c.want)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.sec")
	os.WriteFile(bad, []byte("not a key\n"), 0o600)
	base := Config{Endpoint: "127.0.0.1:1", Bucket: "b", Keys: testKeys(t)}
	cases := map[string]struct {
		mut  func(c *Config)
		want string
	}{
		"no bucket":        {func(c *Config) { c.Bucket = "" }, "Config.Bucket"},
		"no endpoint":      {func(c *Config) { c.Endpoint = "" }, "Config.Endpoint"},
		"endpoint path":    {func(c *Config) { c.Endpoint = "http://h:9000/bucket" }, "without a path"},
		"bad compression":  {func(c *Config) { c.Compression = "brotli" }, "gzip, lzip, none, xz, zstd"},
		"tiny parts":       {func(c *Config) { c.PartSize = 1 << 20 }, "5 MiB"},
		"no keys":          {func(c *Config) { c.Keys = signing.Keys{} }, "no narinfo signing keys"},
		"missing key file": {func(c *Config) { c.Keys = signing.Keys{}; c.KeyFiles = []string{filepath.Join(dir, "nope")} }, "nope"},
		"bad key file":     {func(c *Config) { c.Keys = signing.Keys{}; c.KeyFiles = []string{bad} }, "bad.sec"},
		"bad store dir":    {func(c *Config) { c.StoreDir = "gnu/store" }, "StoreDir"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := base
			c.mut(&cfg)
			_, err := NewPublisher(cfg)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestUnreachable(t *testing.T) {
	port := testbed.FreePort(t)
	p, err := NewPublisher(Config{Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port), Bucket: "cache", Keys: testKeys(t), Retry: Backoff{Sleep: noSleep}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Publish(context.Background(), DiskItem(helloPath, file(t, "hello\n")))
	if err == nil || !strings.Contains(err.Error(), fmt.Sprint(port)) || !strings.Contains(err.Error(), "reachable") {
		t.Errorf("got %v, want an error naming the endpoint and reachability", err)
	}
}

// faultProxy sits between the publisher and MinIO and answers the first n
// requests whose path matches with status code.
func faultProxy(t *testing.T, target, match string, n int32, code int) (string, *atomic.Int32) {
	u, _ := url.Parse(target)
	rp := httputil.NewSingleHostReverseProxy(u) // keeps the Host header, so signatures hold
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, match) && r.Method == http.MethodPut && hits.Add(1) <= n {
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(code)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &hits
}

func TestRetries(t *testing.T) {
	m := testbed.StartMinIO(t)
	ctx := context.Background()
	cases := map[string]struct {
		code      int
		n         int32
		wantErr   bool
		wantTries int32 // PUTs of the narinfo the proxy saw
	}{
		"503 then success": {code: 503, n: 2, wantTries: 3},
		"403 not retried":  {code: 403, n: 100, wantErr: true, wantTries: 1},
		"500 every time":   {code: 500, n: 100, wantErr: true, wantTries: 4},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			e := newEnvOn(t, m)
			proxy, hits := faultProxy(t, m.URL, ".narinfo", c.n, c.code)
			cfg := e.cfg
			cfg.Endpoint = proxy
			var slept []time.Duration
			cfg.Retry = Backoff{Sleep: func(_ context.Context, d time.Duration) error { slept = append(slept, d); return nil }}
			p, err := NewPublisher(cfg)
			if err != nil {
				t.Fatal(err)
			}
			p.c.SetAppInfo("test", "1")
			_, err = p.Publish(ctx, DiskItem(helloPath, file(t, "hello\n")))
			if (err != nil) != c.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, c.wantErr)
			}
			// minio-go itself also retries 5xx (MaxRetries 3) before ours.
			if got := hits.Load(); c.code == 403 && got != c.wantTries {
				t.Errorf("narinfo PUTs = %d, want %d", got, c.wantTries)
			}
			if c.code >= 500 && len(slept) == 0 && c.wantErr {
				t.Errorf("no backoff between attempts")
			}
			if c.code == 403 && len(slept) != 0 {
				t.Errorf("slept %v before retrying a 403", slept)
			}
			if !c.wantErr {
				if code, _ := m.Get(t, e.url(NarInfoKey(mustParse(t, helloPath)))); code != 200 {
					t.Errorf("narinfo GET after retries: %d", code)
				}
			}
		})
	}
}

func mustParse(t testing.TB, p string) storepath.Path {
	sp, err := storepath.DefaultDir.Parse(p)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

// TestBothSignatures: with a Nix and a Guix key, the narinfo carries a Sig
// and a Signature that each verify.
func TestBothSignatures(t *testing.T) {
	e := newEnv(t)
	gk, err := signing.GenerateGuixKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.cfg
	cfg.Keys.Guix = &gk
	p, err := NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.EnsureBucket(context.Background()); err != nil { // again: idempotent
		t.Fatal(err)
	}
	res, err := p.Publish(context.Background(), DiskItem(outPath, tree(t, "signed")))
	if err != nil {
		t.Fatal(err)
	}
	_, body := e.m.Get(t, e.url(res.NarInfoKey))
	ni, err := narinfo.Parse([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	pk, _ := signing.ParseNixPublicKey(testPublicKey)
	if err := ni.Verify([]signing.NixPublicKey{pk}, []signing.GuixPublicKey{gk.Public()}); err != nil {
		t.Errorf("published narinfo: %v\n%s", err, body)
	}
}

// TestNarInfoPutIsConditional: the narinfo PUT never replaces an existing
// one (If-None-Match: *), which settles races between publishers.
func TestNarInfoPutIsConditional(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	created, err := e.pub.putNarInfo(ctx, "x.narinfo", []byte("first"), "")
	if err != nil || !created {
		t.Fatalf("first PUT: %v, %v", created, err)
	}
	created, err = e.pub.putNarInfo(ctx, "x.narinfo", []byte("second"), "")
	if err != nil || created {
		t.Fatalf("second PUT: created %v, %v", created, err)
	}
	if _, body := e.m.Get(t, e.url("x.narinfo")); body != "first" {
		t.Errorf("narinfo replaced: %q", body)
	}
}

// TestNarUploadErrorReported: when the nar upload itself fails, the error
// is the server's answer, not the pipe's, and nothing is published.
func TestNarUploadErrorReported(t *testing.T) {
	m := testbed.StartMinIO(t)
	e := newEnvOn(t, m)
	proxy, _ := faultProxy(t, m.URL, "/nar/", 1000, http.StatusForbidden)
	cfg := e.cfg
	cfg.Endpoint = proxy
	p, err := NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.cfg.PartSize = minPartSize
	for name, dir := range map[string]string{"single PUT": tree(t, "x"), "multipart": bigTree(t)} {
		_, err = p.Publish(context.Background(), DiskItem(outPath, dir))
		t.Logf("%s: %v", name, err)
		if err == nil || !strings.Contains(err.Error(), "403") && !strings.Contains(err.Error(), "Access Denied") && !strings.Contains(err.Error(), "Forbidden") {
			t.Errorf("%s: got %v, want the server's 403", name, err)
		}
	}
	if objs := e.objects(t); len(objs) != 1 { // nix-cache-info
		t.Errorf("objects after failed uploads: %v", objs)
	}
}
