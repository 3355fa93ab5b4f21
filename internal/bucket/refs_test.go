package bucket

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr/funcr"
	"github.com/google/go-cmp/cmp"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/lifecycle"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/signing"
)

// testPath is a store path whose hash part is c repeated (c in nixbase32).
func testPath(c byte, name string) string {
	return "/gnu/store/" + strings.Repeat(string(c), 32) + "-" + name
}

// refItem is a small directory item with references.
func refItem(t testing.TB, storePath, content string, refs ...string) StoreItem {
	it := DiskItem(storePath, tree(t, content))
	it.References = refs
	return it
}

// recorder records the requests of a publisher ("METHOD /bucket/key").
type recorder struct {
	mu   sync.Mutex
	reqs []string
}

func (r *recorder) publisher(t testing.TB, cfg Config) *Publisher {
	t.Helper()
	cfg.Transport = roundTripFunc(func(req *http.Request) (*http.Response, error) {
		r.mu.Lock()
		r.reqs = append(r.reqs, req.Method+" "+req.URL.Path)
		r.mu.Unlock()
		return http.DefaultTransport.RoundTrip(req)
	})
	p, err := NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// count returns how many requests had method and a path ending in suffix.
func (r *recorder) count(method, suffix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, q := range r.reqs {
		m, p, _ := strings.Cut(q, " ")
		if m == method && strings.HasSuffix(p, suffix) {
			n++
		}
	}
	return n
}

// TestBadReferencesRefusedBeforeUpload: a reference that is not a store
// path of this store is refused before any upload, by Publish and
// PublishClosure, so no orphan nar is left.
func TestBadReferencesRefusedBeforeUpload(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var rec recorder
	p := rec.publisher(t, e.cfg)
	before := e.objects(t)
	other := "/nix/store/" + strings.Repeat("1", 32) + "-other"
	cases := map[string]struct {
		mut  func(it *StoreItem)
		want string
	}{
		"other store dir":  {func(it *StoreItem) { it.References = []string{other} }, `References: invalid store path "` + other + `": not in store directory /gnu/store`},
		"not a store path": {func(it *StoreItem) { it.References = []string{"libc"} }, `References: base name "libc" is not`},
		"relative path":    {func(it *StoreItem) { it.References = []string{"gnu/store/" + strings.Repeat("1", 32) + "-x"} }, "References:"},
		"scan candidate":   {func(it *StoreItem) { it.ScanReferences = []string{other} }, "ScanReferences: invalid store path"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			it := DiskItem(outPath, tree(t, name))
			c.mut(&it)
			_, err := p.Publish(ctx, it)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), outPath) {
				t.Errorf("Publish: %v, want an error naming %s and containing %q", err, outPath, c.want)
			}
			_, err = p.PublishClosure(ctx, []StoreItem{DiskItem(helloPath, file(t, "hello\n")), it}, 2)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("PublishClosure: %v, want %q", err, c.want)
			}
		})
	}
	if n := rec.count(http.MethodPut, ""); n != 0 {
		t.Errorf("%d PUTs for refused items", n)
	}
	if d := cmp.Diff(before, e.objects(t)); d != "" {
		t.Errorf("objects appeared (-before +after):\n%s", d)
	}
}

// TestMissingReferencesRefused: a narinfo never names a reference without
// a narinfo. Publish and PublishClosure refuse such items before any
// upload, naming item and reference; each reference is asked about once
// per call.
func TestMissingReferencesRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a, b, c := testPath('a', "a"), testPath('b', "b"), testPath('c', "c")
	y, z := testPath('y', "y"), testPath('z', "z")
	var rec recorder
	p := rec.publisher(t, e.cfg)
	before := e.objects(t)

	_, err := p.Publish(ctx, refItem(t, a, "a", a, z))
	if !errors.Is(err, ErrMissingReference) || !strings.Contains(err.Error(), a) || !strings.Contains(err.Error(), "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-z") {
		t.Errorf("Publish with a missing reference: %v", err)
	}
	batch := []StoreItem{refItem(t, a, "a", b, y), refItem(t, b, "b", b, z), refItem(t, c, "c", z)}
	_, err = p.PublishClosure(ctx, batch, 2)
	if !errors.Is(err, ErrMissingReference) {
		t.Fatalf("PublishClosure with missing references: %v", err)
	}
	for _, want := range []string{a + ": ", "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy-y", b + ": ", c + ": ", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.narinfo"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %q:\n%v", want, err)
		}
	}
	if n := rec.count(http.MethodPut, ""); n != 0 {
		t.Errorf("%d PUTs for refused items", n)
	}
	if d := cmp.Diff(before, e.objects(t)); d != "" {
		t.Errorf("objects appeared (-before +after):\n%s", d)
	}
	if n := rec.count(http.MethodHead, "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.narinfo"); n != 2 {
		t.Errorf("%d HEADs of z's narinfo, want 2 (one per call, though two items refer to it)", n)
	}

	// Self-references need nothing; once y and z are in, all goes.
	for _, it := range []StoreItem{refItem(t, y, "y", y), refItem(t, z, "z")} {
		if _, err := p.Publish(ctx, it); err != nil {
			t.Fatal(err)
		}
	}
	rec.reqs = nil
	res, err := p.PublishClosure(ctx, batch, 2)
	if err != nil {
		t.Fatal(err)
	}
	if n := rec.count(http.MethodHead, "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz.narinfo"); n != 1 {
		t.Errorf("%d HEADs of z's narinfo in one call, want 1", n)
	}
	if d := cmp.Diff([]string{"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b", "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy-y"}, res[0].NarInfo.References); d != "" {
		t.Errorf("a's references (-want +got):\n%s", d)
	}
}

// TestScannedReferences: references found by the scan obey the same rule
// (checked after the upload, before the narinfo), and in a batch one that
// is published earlier is waited for; one that would come later is refused.
func TestScannedReferences(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	w, a, b := testPath('w', "w"), testPath('a', "a"), testPath('b', "b")
	mentions := func(storePath, ref string) StoreItem {
		it := DiskItem(storePath, tree(t, "uses "+ref))
		it.ScanReferences = []string{w, a, b}
		return it
	}

	_, err := e.pub.Publish(ctx, mentions(a, w))
	if !errors.Is(err, ErrMissingReference) || !strings.Contains(err.Error(), "wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww-w") {
		t.Errorf("scanned reference not in the bucket: %v", err)
	}
	_, err = e.pub.PublishClosure(ctx, []StoreItem{mentions(a, b), refItem(t, b, "b")}, 2)
	if err == nil || !strings.Contains(err.Error(), "not in References") {
		t.Errorf("scanned reference published after the item: %v", err)
	}
	for _, k := range e.objects(t) {
		if k == NarInfoKey(mustParse(t, a)) {
			t.Errorf("narinfo %s written", k)
		}
	}
	res, err := e.pub.PublishClosure(ctx, []StoreItem{refItem(t, b, "b"), mentions(a, b)}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := res[1].NarInfo.References; len(got) != 1 || got[0] != "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b" {
		t.Errorf("scanned references %v", got)
	}
}

// TestDeriver: a deriver that is not a derivation of the store (Nix's
// "unknown-deriver") is left out of the narinfo, without error.
func TestDeriver(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	cases := map[string]struct{ deriver, want string }{
		"unknown-deriver":  {"unknown-deriver", ""},
		"other store":      {"/nix/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv", ""},
		"not a derivation": {"/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo", ""},
		"garbage":          {"???", ""},
		"derivation path":  {drvPath, "5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv"},
		"base name":        {"5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv", "5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv"},
	}
	i := 0
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			i++
			it := DiskItem(testPath("abcdfghijk"[i], "out"), tree(t, name))
			it.Deriver = c.deriver
			res, err := e.pub.Publish(ctx, it)
			if err != nil {
				t.Fatal(err)
			}
			_, body := e.m.Get(t, e.url(res.NarInfoKey))
			if res.NarInfo.Deriver != c.want || strings.Contains(body, "Deriver:") != (c.want != "") {
				t.Errorf("Deriver %q, narinfo:\n%s", res.NarInfo.Deriver, body)
			}
		})
	}
}

func TestNormalizeNarHash(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	want := nar.FormatHash(sum[:])
	for _, in := range []string{
		want,
		"sha256:" + hex.EncodeToString(sum[:]),
		hex.EncodeToString(sum[:]),
		"sha256-" + base64.StdEncoding.EncodeToString(sum[:]),
		"sha256-" + base64.RawStdEncoding.EncodeToString(sum[:]),
	} {
		if got, err := normalizeNarHash(in); got != want || err != nil {
			t.Errorf("normalizeNarHash(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "sha256-AAAA", "sha512-" + base64.StdEncoding.EncodeToString(make([]byte, 64)), "sha256:" + strings.Repeat("e", 52), "md5:" + hex.EncodeToString(sum[:16])} {
		if _, err := normalizeNarHash(bad); err == nil {
			t.Errorf("normalizeNarHash(%q): no error", bad)
		}
	}
}

// TestSRINarHash publishes with the NarHash in SRI form, as nix path-info
// --json reports it.
func TestSRINarHash(t *testing.T) {
	e := newEnv(t)
	data := dumpBytes(t, tree(t, "sri"))
	sum := sha256.Sum256(data)
	it := withHash(readerItem(outPath, data), "sha256-"+base64.StdEncoding.EncodeToString(sum[:]))
	res, err := e.pub.Publish(context.Background(), it)
	if err != nil {
		t.Fatal(err)
	}
	if want := "sha256:" + nixbase32.EncodeToString(sum[:]); res.NarInfo.NarHash != want {
		t.Errorf("NarHash %s, want %s", res.NarInfo.NarHash, want)
	}
}

// TestRepairMissingNar: publishing over a narinfo whose nar is gone
// uploads the nar again and rewrites the narinfo (also when the
// compression changed meanwhile); other content is still refused.
func TestRepairMissingNar(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	content := demoDrv
	first, err := e.pub.Publish(ctx, DiskItem(drvPath, file(t, content)))
	if err != nil {
		t.Fatal(err)
	}
	r, _ := NewReader(e.cfg, ReaderOptions{})
	pk, _ := signing.ParseNixPublicKey(testPublicKey)
	gone := func(key string) {
		t.Helper()
		if err := e.m.Client.RemoveObject(ctx, e.bucket, key, minio.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Read(ctx, drvPath); err == nil {
			t.Fatal("Read works without the nar")
		}
	}
	check := func(res Result, compression string) {
		t.Helper()
		if !res.Repaired || res.AlreadyPresent || res.NarInfo.Compression != compression || res.NarKey != res.NarInfo.URL {
			t.Errorf("result %+v", res)
		}
		if got, err := r.Read(ctx, drvPath); err != nil || string(got) != content {
			t.Errorf("Read after the repair = %q, %v", got, err)
		}
		_, body := e.m.Get(t, e.url(first.NarInfoKey))
		ni, err := r.NarInfo(ctx, drvPath)
		if err != nil || ni.Verify([]signing.NixPublicKey{pk}, nil) != nil || ni.URL != res.NarKey {
			t.Errorf("narinfo after the repair (%v):\n%s", err, body)
		}
	}

	gone(first.NarKey)
	res, err := e.pub.Publish(ctx, DiskItem(drvPath, file(t, content)))
	if err != nil {
		t.Fatal(err)
	}
	check(res, "zstd")
	if again, err := e.pub.Publish(ctx, DiskItem(drvPath, file(t, content))); err != nil || !again.AlreadyPresent || again.Repaired {
		t.Errorf("publish after the repair: %+v, %v", again, err)
	}

	// Another compression: the nar goes to its own key, the narinfo follows.
	gone(first.NarKey)
	cfg := e.cfg
	cfg.Compression = "gzip"
	gz, err := NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	item := DiskItem(drvPath, file(t, content))
	item.NarHash = first.NarInfo.NarHash // the known-hash path
	res, err = gz.Publish(ctx, item)
	if err != nil {
		t.Fatal(err)
	}
	check(res, "gzip")

	// Other content over a missing nar: still not reproducible, untouched.
	gone(res.NarKey)
	_, before := e.m.Get(t, e.url(first.NarInfoKey))
	if _, err := e.pub.Publish(ctx, DiskItem(drvPath, file(t, content+" "))); !errors.Is(err, ErrNotReproducible) {
		t.Errorf("other content: %v, want ErrNotReproducible", err)
	}
	if _, after := e.m.Get(t, e.url(first.NarInfoKey)); after != before {
		t.Error("the narinfo was rewritten for other content")
	}
}

// TestEnsureBucketLifecycle: on MinIO, which refuses an
// AbortIncompleteMultipartUpload rule (and expires stale uploads itself),
// EnsureBucket logs nothing at the default verbosity, and an operator's
// lifecycle rules are kept.
func TestEnsureBucketLifecycle(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	opRule := lifecycle.NewConfiguration()
	opRule.Rules = []lifecycle.Rule{{ID: "operator-tmp", Status: "Enabled", RuleFilter: lifecycle.Filter{Prefix: "tmp/"}, Expiration: lifecycle.Expiration{Days: 30}}}
	if err := e.m.Client.SetBucketLifecycle(ctx, e.bucket, opRule); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var lines []string
	cfg := e.cfg
	cfg.Log = funcr.New(func(prefix, args string) {
		mu.Lock()
		lines = append(lines, args)
		mu.Unlock()
	}, funcr.Options{Verbosity: 1})
	p, err := NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.EnsureBucket(ctx); err != nil {
		t.Fatal(err)
	}
	said := false
	for _, l := range lines {
		t.Logf("log: %s", l)
		if !strings.Contains(l, `"level"=1`) {
			t.Errorf("logged at the default verbosity: %s", l)
		}
		said = said || strings.Contains(l, "does not support a lifecycle rule")
	}
	if !said {
		t.Error("MinIO's refusal of the rule was not recognized (at V(1))")
	}
	lc, err := e.m.Client.GetBucketLifecycle(ctx, e.bucket)
	if err != nil || len(lc.Rules) == 0 || lc.Rules[0].ID != "operator-tmp" {
		t.Errorf("the operator's lifecycle rules after EnsureBucket: %+v, %v", lc, err)
	}
}
