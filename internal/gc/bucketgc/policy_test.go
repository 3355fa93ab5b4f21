package bucketgc

import (
	"context"
	"crypto/sha256"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/minio/minio-go/v7"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/guixfarm/guix-farm/internal/gc"
	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/narinfo"
)

// TestPolicyChecks: deleting substitutes takes a declared keep policy, and
// a keep policy given with the orphans policy is refused, not ignored.
func TestPolicyChecks(t *testing.T) {
	c, err := minio.New("localhost:1", &minio.Options{})
	if err != nil {
		t.Fatal(err)
	}
	base := Options{Client: c, Bucket: "b"}
	cases := map[string]struct {
		opts func(o *Options)
		want string // "" accepts
	}{
		"default: orphans, nothing declared":  {opts: func(*Options) {}},
		"roots with a roots list":             {opts: func(o *Options) { o.Mode, o.RootsKey = gc.ModeRoots, "gc/roots" }},
		"roots with declared roots":           {opts: func(o *Options) { o.Mode, o.Declared = gc.ModeRoots, gc.StaticRoots(nil) }},
		"roots with an age rule":              {opts: func(o *Options) { o.Mode, o.Keep.MaxAge = gc.ModeRoots, time.Hour }},
		"roots with the farm's roots only":    {opts: func(o *Options) { o.Mode, o.Roots = gc.ModeRoots, gc.StaticRoots{"x"} }, want: "needs a declared keep policy"},
		"orphans with an age rule":            {opts: func(o *Options) { o.Keep.MaxAge = time.Hour }, want: "with policy orphans"},
		"orphans with a roots list":           {opts: func(o *Options) { o.Mode, o.RootsKey = gc.ModeOrphans, "gc/roots" }, want: "with policy orphans"},
		"unknown policy":                      {opts: func(o *Options) { o.Mode = "age" }, want: `policy "age"`},
		"roots list where nars are collected": {opts: func(o *Options) { o.Mode, o.RootsKey = gc.ModeRoots, "nar/roots" }, want: "under the nar prefix"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			o := base
			tc.opts(&o)
			_, err := o.withDefaults()
			if tc.want == "" && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// TestOrphansPolicy: with no keep policy declared, a run long after
// everything was published deletes only the orphan nar: no narinfo, rooted
// or not, and no nar a narinfo names.
func TestOrphansPolicy(t *testing.T) {
	f := newFarm(t)
	f.publish("c")
	f.publish("a", "c")
	f.publish("unreachable")
	crashed := f.putNar("a publisher died before writing my narinfo")
	f.put(narInfoKey("broken"), []byte("URL: "+f.putNar("nar of broken")+"\nthe rest is garbage\n"))
	before := f.keys()

	opts := Options{Client: f.client(nil), Bucket: f.bucket, Grace: grace, Concurrency: 4,
		Clock: clocktesting.NewFakePassiveClock(time.Now().Add(100 * grace)),
		Roots: gc.RootsFunc(func(context.Context) ([]string, error) {
			t.Error("the orphans policy asked for roots")
			return nil, nil
		})}
	dry := opts
	dry.DryRun = true
	rep, err := Run(context.Background(), dry)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range rep.Lines {
		lines = append(lines, string(l.Outcome)+" "+l.Key+" "+string(l.Reason))
		if l.Outcome == OutcomeWouldDelete && !strings.HasPrefix(l.Why, "no narinfo names it; uploaded ") {
			t.Errorf("why of %s: %q", l.Key, l.Why)
		}
	}
	want := []string{"would-delete " + crashed + " orphan", "report " + narInfoKey("broken") + " unreadable"}
	if d := cmp.Diff(want, lines); d != "" {
		t.Errorf("dry run (-want +got):\n%s", d)
	}

	var told []string
	opts.OnDeleted = func(p, _ []string) { told = append(told, p...) }
	if _, err := Run(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(slices.DeleteFunc(before, func(k string) bool { return k == crashed }), f.keys()); d != "" {
		t.Errorf("bucket after GC (-want +got):\n%s", d)
	}
	if len(told) != 0 {
		t.Errorf("OnDeleted told of %v; no narinfo was to go", told)
	}
}

// TestRootsList: the roots list in the bucket roots what it names; a run
// fails, deleting nothing, while the declared list is missing or wrong.
func TestRootsList(t *testing.T) {
	f := newFarm(t)
	f.publish("release-dep")
	f.publish("release", "release-dep")
	f.publish("old")
	later := time.Now().Add(2 * grace)
	opts := Options{Client: f.client(nil), Bucket: f.bucket, Grace: grace, Mode: gc.ModeRoots, RootsKey: "gc/roots",
		Clock: clocktesting.NewFakePassiveClock(later), Concurrency: 4}
	before := f.keys()

	if _, err := Run(context.Background(), opts); err == nil || !strings.Contains(err.Error(), "s3://substitutes/gc/roots is missing") {
		t.Fatalf("missing roots list: %v", err)
	}
	f.put("gc/roots", []byte("# release 2026.1\nrelease\n"))
	if _, err := Run(context.Background(), opts); err == nil || !strings.Contains(err.Error(), `"release" is not a store path`) {
		t.Fatalf("bad roots list: %v", err)
	}
	if d := cmp.Diff(sorted(append(before, "gc/roots")), f.keys()); d != "" {
		t.Fatalf("a failed run changed the bucket (-before +after):\n%s", d)
	}

	f.put("gc/roots", []byte("# release 2026.1\n"+storePath("release")+"\n"))
	rep, err := Run(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	want := sorted([]string{"gc/roots", narInfoKey("release"), narInfoKey("release-dep"), narKey("nar of release"), narKey("nar of release-dep")})
	if d := cmp.Diff(want, f.keys()); d != "" {
		t.Errorf("bucket after GC (-want +got):\n%s", d)
	}
	if rep.Stats.Roots != 1 || rep.DeletedNarInfos != 1 {
		t.Errorf("roots %d, deleted narinfos %d; want 1 and 1", rep.Stats.Roots, rep.DeletedNarInfos)
	}
}

// TestOnDeletedDerivers: the farm is told each deleted narinfo's deriver,
// so it can find the derivation to rebuild with no Build of it left.
func TestOnDeletedDerivers(t *testing.T) {
	f := newFarm(t)
	f.publish("source") // no deriver
	content := "nar of built"
	sum := sha256.Sum256([]byte(content))
	key := f.putNar(content)
	ni := &narinfo.NarInfo{StorePath: storePath("built"), URL: key, Compression: "none", NarHash: nar.FormatHash(sum[:]),
		NarSize: uint64(len(content)), Deriver: hashOf("built.drv") + "-built.drv"}
	f.put(narInfoKey("built"), ni.Bytes())

	opts := f.options(time.Now().Add(2*grace), "nothing")
	told := map[string]string{}
	opts.OnDeleted = func(paths, derivers []string) {
		if len(paths) != len(derivers) {
			t.Fatalf("%d paths, %d derivers", len(paths), len(derivers))
		}
		for i, p := range paths {
			told[p] = derivers[i]
		}
	}
	if _, err := Run(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{storePath("source"): "", storePath("built"): hashOf("built.drv") + "-built.drv"}
	if d := cmp.Diff(want, told); d != "" {
		t.Errorf("OnDeleted (-want +got):\n%s", d)
	}
}
