package bucketgc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/guixfarm/guix-farm/internal/gc"
	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/narinfo"
	"github.com/guixfarm/guix-farm/test/testbed"
)

const grace = 24 * time.Hour

// farm is a MinIO bucket with a tiny publisher writing objects the way
// bucket.Publisher does: the nar, then the narinfo as the commit point.
type farm struct {
	t      *testing.T
	m      *testbed.MinIO
	bucket string
}

func newFarm(t *testing.T) *farm {
	m := testbed.StartMinIO(t)
	f := &farm{t: t, m: m, bucket: "substitutes"}
	m.MakeBucket(t, f.bucket)
	return f
}

func hashOf(name string) string {
	sum := sha256.Sum256([]byte(name))
	return nixbase32.EncodeToString(sum[:20])
}

func storePath(name string) string  { return "/gnu/store/" + hashOf(name) + "-" + name }
func narInfoKey(name string) string { return hashOf(name) + ".narinfo" }

// narKey is content-addressed, like bucket.NarKey.
func narKey(content string) string {
	sum := sha256.Sum256([]byte(content))
	return "nar/none/" + nixbase32.EncodeToString(sum[:]) + ".nar"
}

func (f *farm) put(key string, data []byte) {
	f.t.Helper()
	_, err := f.m.Client.PutObject(context.Background(), f.bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{})
	if err != nil {
		f.t.Fatalf("put %s: %v", key, err)
	}
}

// putNar uploads the "nar" of content and returns its key.
func (f *farm) putNar(content string) string {
	key := narKey(content)
	f.put(key, []byte(content))
	return key
}

// publish uploads the nar of content (default: name) and then the
// narinfo of name with references to refs.
func (f *farm) publish(name string, refs ...string) {
	f.publishContent(name, "nar of "+name, refs...)
}

func (f *farm) publishContent(name, content string, refs ...string) {
	f.t.Helper()
	key := f.putNar(content)
	sum := sha256.Sum256([]byte(content))
	ni := &narinfo.NarInfo{StorePath: storePath(name), URL: key, Compression: "none",
		NarHash: nar.FormatHash(sum[:]), NarSize: uint64(len(content)), FileHash: nar.FormatHash(sum[:]), FileSize: uint64(len(content))}
	for _, r := range refs {
		ni.References = append(ni.References, hashOf(r)+"-"+r)
	}
	f.put(narInfoKey(name), ni.Bytes())
}

// keys lists the bucket.
func (f *farm) keys() []string {
	f.t.Helper()
	var out []string
	for o := range f.m.Client.ListObjects(context.Background(), f.bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			f.t.Fatal(o.Err)
		}
		out = append(out, o.Key)
	}
	slices.Sort(out)
	return out
}

func (f *farm) client(rt http.RoundTripper) *minio.Client {
	f.t.Helper()
	if rt == nil {
		rt = http.DefaultTransport
	}
	c, err := minio.New(f.m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(f.m.AccessKey, f.m.SecretKey, ""), Transport: rt})
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

// options runs with policy roots, the store paths of roots declared.
func (f *farm) options(at time.Time, roots ...string) Options {
	var paths []string
	for _, r := range roots {
		paths = append(paths, storePath(r))
	}
	return Options{Client: f.client(nil), Bucket: f.bucket, Grace: grace, Mode: gc.ModeRoots, Declared: gc.StaticRoots(paths),
		Clock: clocktesting.NewFakePassiveClock(at), Concurrency: 4}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestRunDryRunAndForReal(t *testing.T) {
	f := newFarm(t)
	f.put("nix-cache-info", []byte("StoreDir: /gnu/store\n"))
	f.put("log/"+hashOf("a.drv")+"-a.drv", []byte("log"))
	f.publish("c")
	f.publish("b", "c", "b")
	f.publish("a", "b")
	f.publish("d", "c")
	f.publish("e", "e")
	f.publishContent("e-twin", "nar of e") // shares e's nar
	f.publishContent("keep-twin", "nar of d")
	crashed := f.putNar("a publisher died before writing my narinfo")
	all := f.keys()

	now := time.Now()
	later := now.Add(grace + time.Hour)

	t.Run("dry run lists and deletes nothing", func(t *testing.T) {
		opts := f.options(later, "a", "keep-twin")
		opts.DryRun = true
		opts.OnDeleted = func(_, _ []string) { t.Error("OnDeleted called in a dry run") }
		rep, err := Run(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(all, f.keys()); d != "" {
			t.Fatalf("a dry run changed the bucket (-before +after):\n%s", d)
		}
		var got []string
		for _, l := range rep.Lines {
			got = append(got, string(l.Outcome)+" "+l.Key+" "+string(l.Reason))
		}
		want := []string{
			"would-delete " + narInfoKey("d") + " unreachable",
			"would-delete " + narInfoKey("e") + " unreachable",
			"would-delete " + narInfoKey("e-twin") + " unreachable",
			"would-delete " + narKey("nar of e") + " nar-of-deleted",
			"would-delete " + crashed + " orphan",
		}
		slices.Sort(want[:3])
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("report lines (-want +got):\n%s", d)
		}
		var out bytes.Buffer
		rep.WriteTo(&out)
		for _, w := range []string{"gc dry-run bucket=substitutes policy=roots", "would-delete narinfo " + narInfoKey("d") + " unreachable " + storePath("d") + " size=",
			`why="no kept root reaches it (policy roots); published `, `older than the grace (24h0m0s)"`,
			"would-delete nar " + crashed + " orphan size=", `why="no narinfo names it; uploaded `,
			"would-delete nar " + narKey("nar of e") + " nar-of-deleted size=", `why="only narinfos this run deletes point at it (`,
			"deleted-narinfos=3 deleted-nars=2", "orphans=1"} {
			if !strings.Contains(out.String(), w) {
				t.Errorf("report lacks %q:\n%s", w, out.String())
			}
		}
	})

	t.Run("within the grace nothing goes", func(t *testing.T) {
		rep, err := Run(context.Background(), f.options(now))
		if err == nil {
			t.Fatalf("no roots and no selector must be refused; report: %+v", rep)
		}
		opts := f.options(now)
		opts.AllowNoRoots = true
		if rep, err = Run(context.Background(), opts); err != nil {
			t.Fatal(err)
		}
		if rep.DeletedNarInfos+rep.DeletedNars != 0 || rep.Stats.Young != 7 {
			t.Errorf("deleted %d narinfos, %d nars; %d young", rep.DeletedNarInfos, rep.DeletedNars, rep.Stats.Young)
		}
		if d := cmp.Diff(all, f.keys()); d != "" {
			t.Fatalf("the bucket changed (-before +after):\n%s", d)
		}
	})

	t.Run("for real", func(t *testing.T) {
		opts := f.options(later, "a", "keep-twin")
		var told [][]string
		opts.OnDeleted = func(p, _ []string) { told = append(told, sorted(p)) }
		rep, err := Run(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff([][]string{sorted([]string{storePath("d"), storePath("e"), storePath("e-twin")})}, told); d != "" {
			t.Errorf("OnDeleted (-want +got):\n%s", d)
		}
		want := sorted([]string{"nix-cache-info", "log/" + hashOf("a.drv") + "-a.drv",
			narInfoKey("a"), narInfoKey("b"), narInfoKey("c"), narInfoKey("keep-twin"),
			narKey("nar of a"), narKey("nar of b"), narKey("nar of c"), narKey("nar of d")})
		if d := cmp.Diff(want, f.keys()); d != "" {
			t.Errorf("bucket after GC (-want +got):\n%s", d)
		}
		if rep.DeletedNarInfos != 3 || rep.DeletedNars != 2 || rep.Orphans != 1 || rep.DeletedBytes == 0 || rep.Skipped != 0 {
			t.Errorf("report counts: %+v", rep)
		}
		if _, err := f.m.Client.StatObject(context.Background(), f.bucket, narInfoKey("d"), minio.StatObjectOptions{}); !isNotFound(err) {
			t.Errorf("stat d.narinfo: %v, want not found", err)
		}
	})

	t.Run("unrooting a removes the chain after the grace", func(t *testing.T) {
		opts := f.options(later, "keep-twin")
		rep, err := Run(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		want := sorted([]string{"nix-cache-info", "log/" + hashOf("a.drv") + "-a.drv", narInfoKey("keep-twin"), narKey("nar of d")})
		if d := cmp.Diff(want, f.keys()); d != "" {
			t.Errorf("bucket after GC (-want +got):\n%s", d)
		}
		if rep.DeletedNarInfos != 3 || rep.DeletedNars != 3 {
			t.Errorf("deleted %d narinfos and %d nars, want 3 and 3", rep.DeletedNarInfos, rep.DeletedNars)
		}
	})
}

// TestCrashedPublisherOrphan: a publisher killed between the nar and the
// narinfo leaves a nar that GC removes after the grace period, not before.
func TestCrashedPublisherOrphan(t *testing.T) {
	f := newFarm(t)
	f.publish("kept")
	orphan := f.putNar("half-published") // killed here
	now := time.Now()
	for _, step := range []struct {
		at   time.Time
		want bool // orphan still there
	}{{now, true}, {now.Add(grace - time.Minute), true}, {now.Add(grace + time.Minute), false}} {
		rep, err := Run(context.Background(), f.options(step.at, "kept"))
		if err != nil {
			t.Fatal(err)
		}
		if got := slices.Contains(f.keys(), orphan); got != step.want {
			t.Fatalf("at now+%v: orphan present %v, want %v\n%+v", step.at.Sub(now), got, step.want, rep.Lines)
		}
	}
	if !slices.Contains(f.keys(), narInfoKey("kept")) {
		t.Fatal("the rooted narinfo was deleted")
	}
}

// hookTransport calls hooks on the GC client's requests.
type hookTransport struct {
	mu    sync.Mutex
	hooks []func(*http.Request) bool // true: done, remove the hook
}

func (h *hookTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	h.mu.Lock()
	kept := h.hooks[:0]
	for _, hook := range h.hooks {
		if !hook(req) {
			kept = append(kept, hook)
		}
	}
	h.hooks = kept
	h.mu.Unlock()
	return http.DefaultTransport.RoundTrip(req)
}

// TestRacesWithPublishers: a narinfo published during the run that
// references a planned deletion rescues it, and a narinfo re-published
// between the listing and its deletion is kept (and so is its nar).
func TestRacesWithPublishers(t *testing.T) {
	f := newFarm(t)
	f.publish("old-dep")
	f.publish("old-dep2")
	f.publish("republished")
	f.publish("gone")
	later := time.Now().Add(grace + time.Hour)

	ht := &hookTransport{}
	// After the narinfos are read, while nars are listed: a build that
	// uses old-dep is published.
	ht.hooks = append(ht.hooks, func(r *http.Request) bool {
		if r.Method == http.MethodGet && r.URL.Query().Get("prefix") == "nar/" {
			f.publish("new", "old-dep")
			return true
		}
		return false
	})
	// At the second narinfo listing (the rescan): a build published
	// after the nar listing, nar included.
	rootListings := 0
	ht.hooks = append(ht.hooks, func(r *http.Request) bool {
		if r.Method == http.MethodGet && r.URL.Query().Has("list-type") && r.URL.Query().Get("prefix") == "" {
			if rootListings++; rootListings == 2 {
				f.publish("late", "old-dep2")
				return true
			}
		}
		return false
	})
	// At the first re-check: "republished" is deleted and published again
	// by someone else (a new ETag and modification time).
	ht.hooks = append(ht.hooks, func(r *http.Request) bool {
		if r.Method == http.MethodHead {
			time.Sleep(1100 * time.Millisecond) // a later Last-Modified second
			f.publishContent("republished", "nar of republished", "gone")
			return true
		}
		return false
	})
	opts := f.options(later)
	opts.AllowNoRoots = true
	opts.Client = f.client(ht)
	rep, err := Run(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	rep.WriteTo(&buf)
	keys := f.keys()
	for _, k := range []string{narInfoKey("old-dep"), narKey("nar of old-dep"), narInfoKey("new"), narInfoKey("republished"), narKey("nar of republished"),
		narInfoKey("late"), narKey("nar of late"), narInfoKey("old-dep2"), narKey("nar of old-dep2")} {
		if !slices.Contains(keys, k) {
			t.Errorf("%s was deleted\n%s", k, buf.String())
		}
	}
	if rep.Rescued != 2 || rep.Skipped != 2 || rep.Stats.MissingNars != 0 {
		t.Errorf("rescued %d, skipped %d, missing nars %d; want 2, 2 (the re-published narinfo and its nar) and 0\n%s", rep.Rescued, rep.Skipped, rep.Stats.MissingNars, buf.String())
	}
	// "gone" was unreferenced at planning time and is deleted even though
	// the re-published narinfo now references it: the re-check cannot see
	// new references; the next run reports the dangling reference.
	if slices.Contains(keys, narInfoKey("gone")) {
		t.Errorf("gone was kept\n%s", buf.String())
	}
}

func TestMissingNar(t *testing.T) {
	f := newFarm(t)
	f.publish("a")
	f.publish("b")
	if err := f.m.Client.RemoveObject(context.Background(), f.bucket, narKey("nar of b"), minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	opts := f.options(time.Now(), "a", "b")
	rep, err := Run(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Stats.MissingNars != 1 || rep.DeletedNarInfos != 0 || len(rep.Lines) != 1 || rep.Lines[0].Outcome != OutcomeReported {
		t.Fatalf("report: %+v", rep)
	}
	opts.DeleteMissingNar = true
	var told []string
	opts.OnDeleted = func(p, _ []string) { told = append(told, p...) }
	if rep, err = Run(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	if rep.MissingNarsDeleted != 1 || slices.Contains(f.keys(), narInfoKey("b")) {
		t.Fatalf("the narinfo without its nar is still served: %+v", rep)
	}
	if d := cmp.Diff([]string{storePath("b")}, told); d != "" {
		t.Errorf("OnDeleted (-want +got):\n%s", d)
	}
}

func TestUnreadableNarInfoIsKept(t *testing.T) {
	f := newFarm(t)
	f.put(narInfoKey("broken"), []byte("this is not a narinfo\n"))
	opts := f.options(time.Now().Add(2*grace), "nothing")
	rep, err := Run(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(f.keys(), narInfoKey("broken")) {
		t.Fatal("an unreadable narinfo was deleted")
	}
	if rep.Stats.Unreadable != 1 || len(rep.Lines) != 1 || rep.Lines[0].Reason != gc.ReasonUnreadable || rep.Lines[0].Note == "" {
		t.Errorf("report: %+v", rep.Lines)
	}
}
