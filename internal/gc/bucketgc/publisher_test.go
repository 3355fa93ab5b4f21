package bucketgc

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/nar"
)

// killOnNarInfo stands for a publisher killed after its nar is stored:
// the narinfo PUT never reaches the server.
type killOnNarInfo struct{ cancel context.CancelFunc }

func (k killOnNarInfo) RoundTrip(req *http.Request) (*http.Response, error) {
	if k.cancel != nil && req.Method == http.MethodPut && strings.HasSuffix(req.URL.Path, ".narinfo") {
		k.cancel()
		return nil, context.Canceled
	}
	return http.DefaultTransport.RoundTrip(req)
}

func (f *farm) publisher(rt http.RoundTripper) *bucket.Publisher {
	f.t.Helper()
	p, err := bucket.NewPublisher(bucket.Config{
		Endpoint: f.m.URL, Bucket: f.bucket, AccessKey: f.m.AccessKey, SecretKey: f.m.SecretKey,
		AllowUnsigned: true, Compression: "zstd", Transport: rt,
		Retry: bucket.Backoff{Sleep: func(context.Context, time.Duration) error { return nil }},
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return p
}

// item is a one-file store item with the given content and references.
func (f *farm) item(name, content string, refs ...string) bucket.StoreItem {
	f.t.Helper()
	dir := filepath.Join(f.t.TempDir(), name)
	if err := os.WriteFile(dir, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
	it := bucket.StoreItem{StorePath: storePath(name), Open: func(context.Context) (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(nar.Dump(pw, dir)) }()
		return pr, nil
	}}
	for _, r := range refs {
		it.References = append(it.References, storePath(r))
	}
	return it
}

// TestWithPublisher runs GC over what bucket.Publisher writes, including
// the nar of a publisher killed before its narinfo.
func TestWithPublisher(t *testing.T) {
	f := newFarm(t)
	ctx := context.Background()
	pub := f.publisher(nil)
	var narOf = map[string]string{}
	for _, it := range []bucket.StoreItem{
		f.item("libc", "libc"), f.item("app", "app", "libc"), f.item("tool", "tool", "libc"),
	} {
		res, err := pub.Publish(ctx, it)
		if err != nil {
			t.Fatal(err)
		}
		narOf[it.StorePath] = res.NarKey
	}
	killCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	_, err := f.publisher(killOnNarInfo{cancel: cancel}).Publish(killCtx, f.item("crashed", "crashed", "libc"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("the killed publish returned %v", err)
	}
	var orphan string
	for _, k := range f.keys() {
		if strings.HasPrefix(k, "nar/") && !slices.Contains([]string{narOf[storePath("libc")], narOf[storePath("app")], narOf[storePath("tool")]}, k) {
			orphan = k
		}
	}
	if orphan == "" {
		t.Fatalf("no orphan nar left by the killed publisher: %v", f.keys())
	}

	now := time.Now()
	for _, step := range []struct {
		at   time.Time
		gone []string
	}{
		{at: now},
		{at: now.Add(grace + time.Hour), gone: []string{narInfoKey("tool"), narOf[storePath("tool")], orphan}},
	} {
		before := f.keys()
		rep, err := Run(ctx, f.options(step.at, "app"))
		if err != nil {
			t.Fatal(err)
		}
		var gone []string
		for _, k := range before {
			if !slices.Contains(f.keys(), k) {
				gone = append(gone, k)
			}
		}
		if !slices.Equal(sorted(step.gone), gone) {
			t.Errorf("at now+%v deleted %v, want %v\n%+v", step.at.Sub(now), gone, sorted(step.gone), rep.Lines)
		}
	}
}
