package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/google/go-cmp/cmp"
	"github.com/minio/minio-go/v7"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers"
	"github.com/guixfarm/guix-farm/controllers/builds"
	"github.com/guixfarm/guix-farm/internal/availability"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/drvsource"
	"github.com/guixfarm/guix-farm/internal/gc"
	"github.com/guixfarm/guix-farm/internal/gc/bucketgc"
	"github.com/guixfarm/guix-farm/internal/storepath"
	"github.com/guixfarm/guix-farm/test/farm"
)

// gcFarm is a farm's bucket (a real MinIO) and Builds (a real apiserver) for GC tests.
type gcFarm struct {
	t      *testing.T
	ctx    context.Context
	ns     string
	drvs   *farm.Drvs
	pub    *bucket.Publisher
	reader *bucket.Reader
	client *minio.Client
	bucket string
}

// drv adds a derivation and publishes its .drv, referencing its inputs' .drvs as a real .drv's
// narinfo does. It returns the .drv path and its output's path.
func (f *gcFarm) drv(name string, salt int, inputs ...string) (drv, out string) {
	f.t.Helper()
	drv, out = f.unpublishedDrv(name, salt, inputs...)
	item := bucket.DiskItem(drv, filepath.Join(f.drvs.Dir, filepath.Base(drv)))
	item.References = inputs
	f.publish(item)
	return drv, out
}

// unpublishedDrv adds a derivation without publishing its .drv.
func (f *gcFarm) unpublishedDrv(name string, salt int, inputs ...string) (drv, out string) {
	f.t.Helper()
	drv = f.drvs.Add(f.t, name, "x86_64-linux", salt, inputs...)
	data, err := os.ReadFile(filepath.Join(f.drvs.Dir, filepath.Base(drv)))
	if err != nil {
		f.t.Fatal(err)
	}
	parsed, err := derivation.Parse(data)
	if err != nil {
		f.t.Fatal(err)
	}
	return drv, parsed.OutputPaths()["out"]
}

// output publishes drv's output out (as an agent does: with its Deriver) referencing refs.
func (f *gcFarm) output(drv, out string, refs ...string) {
	f.t.Helper()
	file := filepath.Join(f.t.TempDir(), "out")
	if err := os.WriteFile(file, []byte("built from "+drv+"\n"), 0o644); err != nil {
		f.t.Fatal(err)
	}
	item := bucket.DiskItem(out, file)
	item.References, item.Deriver = refs, drv
	f.publish(item)
}

func (f *gcFarm) publish(item bucket.StoreItem) {
	f.t.Helper()
	if _, err := f.pub.Publish(f.ctx, item); err != nil {
		f.t.Fatalf("publishing %s: %v", item.StorePath, err)
	}
}

// build creates a Build of drv and gives it phase (with outputs and a Succeeded reason), as the
// controller would have.
func (f *gcFarm) build(name, drv string, phase farmv1.BuildPhase, reason string, outputs ...string) *farmv1.Build {
	f.t.Helper()
	b := farm.MakeBuild(name, f.ns, drv).Obj()
	if err := env.Client.Create(f.ctx, b); err != nil {
		f.t.Fatal(err)
	}
	if phase == "" {
		return b
	}
	b.Status.Phase = phase
	for i, o := range outputs {
		b.Status.Outputs = append(b.Status.Outputs, farmv1.Output{Name: fmt.Sprintf("out%d", i), Path: o})
	}
	if reason != "" {
		b.Status.Conditions = []metav1.Condition{{Type: farmv1.BuildConditionSucceeded, Status: metav1.ConditionTrue,
			Reason: reason, Message: "set by the test", LastTransitionTime: metav1.Now()}}
	}
	if err := env.Client.Status().Update(f.ctx, b); err != nil {
		f.t.Fatal(err)
	}
	return b
}

// objects lists the bucket: key → LastModified.
func (f *gcFarm) objects() map[string]time.Time {
	f.t.Helper()
	out := map[string]time.Time{}
	for o := range f.client.ListObjects(f.ctx, f.bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			f.t.Fatal(o.Err)
		}
		out[o.Key] = o.LastModified
	}
	return out
}

// keysOf returns the keys of the narinfos of paths and of their nars, as the bucket holds them.
func (f *gcFarm) keysOf(paths ...string) []string {
	f.t.Helper()
	var keys []string
	for _, p := range paths {
		sp, err := storepath.DefaultDir.Parse(p)
		if err != nil {
			f.t.Fatal(err)
		}
		ni, err := f.reader.NarInfo(f.ctx, p)
		if err != nil || ni == nil {
			f.t.Fatalf("narinfo of %s: %v", p, err)
		}
		keys = append(keys, bucket.NarInfoKey(sp), ni.URL)
	}
	return keys
}

// TestGCKeepsWhatTheFarmNeeds: the GC, with the farm's roots (BuildRoots over the apiserver's
// Builds: pending, running, succeeded, skipped, failed; one TTL-deleted), over a bucket that
// holds their .drvs and outputs, an orphan nar, and old and recent substitutes nothing roots.
//   - With no policy declared only the orphan nar goes.
//   - With a declared root (a roots list in the bucket naming the TTL-deleted Build's output)
//     and an age rule: nothing reachable from a root or a live Build goes; the old unreachable
//     substitutes (narinfo and nar) do, the recent one stays (the age rule), and the
//     availability owner is told, through the deleted narinfo's Deriver, that the derivation
//     nobody has a Build of lost its outputs.
func TestGCKeepsWhatTheFarmNeeds(t *testing.T) {
	ctx := context.Background()
	cfg, pub := unsignedBucket(t)
	reader, err := bucket.NewReader(cfg, bucket.ReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := &gcFarm{t: t, ctx: ctx, ns: env.Namespace(t, "gc"), drvs: farm.NewDrvs(t), pub: pub, reader: reader,
		client: pub.Client(), bucket: cfg.Bucket}

	// The pending Build's input was built (by the farm, or elsewhere); the pending one was not.
	baseDrv, baseOut := f.drv("base", 1)
	f.output(baseDrv, baseOut)
	pendingDrv, _ := f.drv("pending-app", 2, baseDrv)
	libDrv, libOut := f.drv("running-lib", 3)
	f.output(libDrv, libOut)
	runningDrv, _ := f.drv("running-app", 4, libDrv)
	// A succeeded Build's output references a runtime dependency no Build names.
	depDrv, depOut := f.drv("runtime-dep", 5)
	f.output(depDrv, depOut)
	okDrv, okOut := f.drv("succeeded-app", 6, depDrv)
	f.output(okDrv, okOut, depOut)
	skipDrv, skipOut := f.drv("skipped-app", 7)
	f.output(skipDrv, skipOut)
	failedDrv, _ := f.drv("failed-app", 8)
	ttlDrv, ttlOut := f.drv("ttl-deleted-app", 9)
	f.output(ttlDrv, ttlOut)
	oldDrv, oldOut := f.drv("unreachable-old", 10)
	f.output(oldDrv, oldOut)
	orphan := "nar/zstd/" + strings.Repeat("0", 52) + ".nar.zst" // a publisher died before its narinfo
	if _, err := f.client.PutObject(ctx, f.bucket, orphan, bytes.NewReader([]byte("half")), 4, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}

	f.build("pending", pendingDrv, farmv1.BuildPending, "")
	f.build("running", runningDrv, farmv1.BuildRunning, "")
	f.build("succeeded", okDrv, farmv1.BuildSucceeded, farmv1.ReasonSucceeded, okOut)
	f.build("skipped", skipDrv, farmv1.BuildSucceeded, builds.ReasonOutputsAvailable, skipOut)
	f.build("failed", failedDrv, farmv1.BuildFailed, "")
	ttl := f.build("ttl-deleted", ttlDrv, farmv1.BuildSucceeded, farmv1.ReasonSucceeded, ttlOut)
	if err := env.Client.Delete(ctx, ttl); err != nil {
		t.Fatal(err)
	}
	var lastOld time.Time
	for _, at := range f.objects() {
		if at.After(lastOld) {
			lastOld = at
		}
	}

	// Something published later, that nothing roots either: the age rule keeps it.
	time.Sleep(2500 * time.Millisecond)
	recentDrv, recentOut := f.unpublishedDrv("unreachable-recent", 11)
	f.output(recentDrv, recentOut)
	all := f.objects()
	// "Now" is a second after the last publish; the grace is half a second; the age rule keeps
	// what was published after the old objects.
	now := all[f.keysOf(recentOut)[0]].Add(time.Second)
	grace := 500 * time.Millisecond
	maxAge := now.Sub(lastOld) - grace

	facts := drvsource.NewFactsCache(reader, 100)
	owner, err := availability.New(availability.Options{Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(owner.Close)
	var told [][2]string
	opts := bucketgc.Options{Client: f.client, Bucket: f.bucket, Grace: grace, Concurrency: 4,
		Clock: clocktesting.NewFakePassiveClock(now), Log: testr.New(t),
		Roots: controllers.BuildRoots{Client: env.Client, Namespace: f.ns, Facts: facts},
		OnDeleted: func(paths, derivers []string) {
			for i := range paths {
				told = append(told, [2]string{paths[i], derivers[i]})
			}
			controllers.OutputsDeleted(owner)(paths, derivers)
		}}

	t.Run("no policy: only the orphan nar goes", func(t *testing.T) {
		rep, err := bucketgc.Run(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		want := keys(all)
		want = slices.DeleteFunc(want, func(k string) bool { return k == orphan })
		if d := cmp.Diff(want, keys(f.objects())); d != "" {
			t.Errorf("bucket after GC (-want +got):\n%s", d)
		}
		if rep.Orphans != 1 || rep.DeletedNarInfos != 0 || len(told) != 0 {
			t.Errorf("orphans %d, narinfos deleted %d, told %v; want 1, 0, none", rep.Orphans, rep.DeletedNarInfos, told)
		}
	})

	// The distribution's roots list keeps the TTL-deleted Build's output (its release).
	roots := "# release 2026.1\n" + ttlOut + "\n"
	if _, err := f.client.PutObject(ctx, f.bucket, "gc/roots", strings.NewReader(roots), int64(len(roots)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	opts.Mode, opts.RootsKey, opts.Keep = gc.ModeRoots, "gc/roots", gc.RootSelector{MaxAge: maxAge}
	gone := f.keysOf(ttlDrv, oldDrv, oldOut)

	t.Run("declared root and age rule: the dry run says what would go and why", func(t *testing.T) {
		dry := opts
		dry.DryRun = true
		before := keys(f.objects())
		rep, err := bucketgc.Run(ctx, dry)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, l := range rep.Lines {
			got = append(got, l.Key)
			why := "no kept root reaches it (policy roots); published "
			if l.Kind == gc.KindNar {
				why = "only narinfos this run deletes point at it ("
			}
			if l.Outcome != bucketgc.OutcomeWouldDelete || !strings.HasPrefix(l.Why, why) {
				t.Errorf("%s %s: why %q, want %q...", l.Outcome, l.Key, l.Why, why)
			}
			if l.Kind == gc.KindNarInfo && !strings.Contains(l.Why, "and the keep max age") {
				t.Errorf("%s: why %q does not name the age rule", l.Key, l.Why)
			}
		}
		if d := cmp.Diff(sorted(gone), sorted(got)); d != "" {
			t.Errorf("would delete (-want +got):\n%s", d)
		}
		if d := cmp.Diff(before, keys(f.objects())); d != "" {
			t.Errorf("the dry run changed the bucket (-before +after):\n%s", d)
		}
	})

	t.Run("declared root and age rule: only the unreachable old substitutes go", func(t *testing.T) {
		if _, known := owner.Peek(oldDrv); known {
			t.Fatal("the availability owner knew the old derivation before GC")
		}
		rep, err := bucketgc.Run(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		want := slices.DeleteFunc(keys(f.objects()), func(k string) bool { return slices.Contains(gone, k) })
		want = sorted(want)
		kept := append(f.keysOf(baseDrv, baseOut, pendingDrv, libDrv, libOut, runningDrv, depDrv, depOut, okDrv, okOut,
			skipDrv, skipOut, failedDrv, ttlOut, recentOut), "gc/roots")
		for _, k := range kept {
			if !slices.Contains(want, k) {
				t.Fatalf("%s is not in the bucket before the run", k)
			}
		}
		if d := cmp.Diff(want, keys(f.objects())); d != "" {
			t.Errorf("bucket after GC (-want +got):\n%s\nreport:\n%+v", d, rep.Lines)
		}
		for _, k := range gone {
			if _, err := f.client.StatObject(ctx, f.bucket, k, minio.StatObjectOptions{}); err == nil {
				t.Errorf("%s is still in the bucket", k)
			}
		}
		wantTold := [][2]string{{oldOut, filepath.Base(oldDrv)}, {oldDrv, ""}, {ttlDrv, ""}}
		slices.SortFunc(wantTold, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
		slices.SortFunc(told, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
		if d := cmp.Diff(wantTold, told); d != "" {
			t.Errorf("OnDeleted (path, deriver) (-want +got):\n%s", d)
		}
		// No Build of the old derivation exists: the deriver alone tells the owner.
		if available, known := owner.Peek(oldDrv); available || !known {
			t.Errorf("owner's answer for %s after GC: available %v, known %v; want known absent", oldDrv, available, known)
		}
	})
}

func keys(m map[string]time.Time) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	return sorted(keys)
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
