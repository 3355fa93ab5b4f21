package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/drvsource"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/test/farm"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// TestBucketIsTheSource: the controller reads .drv files from the farm's bucket (a real MinIO)
// into its planner, finishes a Build whose outputs the bucket already has (skipIfOutputsAvailable), reports a
// .drv missing from the bucket as a condition, retrying with backoff, without crashing, and fails
// a Build whose .drv does not parse (no retry can help it) without an attempt.
func TestBucketIsTheSource(t *testing.T) {
	ctx := context.Background()
	cfg, pub := unsignedBucket(t)
	drvs := farm.NewDrvs(t)
	built := drvs.Add(t, "already-built", "x86_64-linux", 1)
	fresh := drvs.Add(t, "fresh", "x86_64-linux", 2)
	missing := drvs.Add(t, "missing", "x86_64-linux", 3)
	publishFile := func(storePath, file string) {
		t.Helper()
		if _, err := pub.Publish(ctx, bucket.DiskItem(storePath, file)); err != nil {
			t.Fatalf("publishing %s: %v", storePath, err)
		}
	}
	for _, d := range []string{built, fresh} {
		publishFile(d, filepath.Join(drvs.Dir, filepath.Base(d)))
	}
	invalid := filepath.Join(string(drvs.Store), "0123456789abcdfghijklmnpqrsvwxyz-invalid.drv")
	garbage := filepath.Join(t.TempDir(), "garbage")
	if err := os.WriteFile(garbage, []byte("not a derivation\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	publishFile(invalid, garbage)
	publishBuiltElsewhere(t, pub, drvs, built)

	reader, err := bucket.NewReader(cfg, bucket.ReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns := env.Namespace(t, "bucket")
	f := env.StartController(t, ns, "", farm.ControllerOptions{Strategy: planner.Basic,
		Facts: drvsource.NewFactsCache(reader, 100), Bucket: reader})
	pool := &farmv1.AgentPool{ObjectMeta: metav1.ObjectMeta{Name: "x86", Namespace: ns},
		Spec: farmv1.AgentPoolSpec{Systems: []string{"x86_64-linux"}, Replicas: ptr.To[int32](0)}}
	if err := env.Client.Create(ctx, pool); err != nil {
		t.Fatal(err)
	}
	skip := farm.MakeBuild("already-built", ns, built).Obj()
	skip.Spec.SkipIfOutputsAvailable = true
	for _, b := range []*farmv1.Build{skip, farm.MakeBuild("fresh", ns, fresh).Obj(), farm.MakeBuild("missing", ns, missing).Obj(),
		farm.MakeBuild("invalid", ns, invalid).Obj()} {
		if err := env.Client.Create(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	get := func(name string) *farmv1.Build {
		b := &farmv1.Build{}
		_ = env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, b)
		return b
	}
	waitFor(t, 30*time.Second, "the four builds to settle", func() (bool, string) {
		// fresh only waits for an agent: it is not written (the quiet queue), but its facts,
		// read from the bucket, are in the planner.
		s, mi, inv := get("already-built"), get("missing"), get("invalid")
		fresh := f.Loop.Planner().Stats().Pending["x86_64-linux"]
		c := meta.FindStatusCondition(mi.Status.Conditions, farmv1.BuildConditionDerivationReadable)
		ic := meta.FindStatusCondition(inv.Status.Conditions, farmv1.BuildConditionSucceeded)
		ok := s.Status.Phase == farmv1.BuildSucceeded && fresh == 1 &&
			c != nil && c.Status == metav1.ConditionFalse && c.Reason == "NotFound" &&
			inv.Status.Phase == farmv1.BuildFailed && ic != nil && ic.Reason == farmv1.ReasonInvalidDerivation
		return ok, fmt.Sprintf("already-built %s, x86_64-linux builds in the planner %d, missing %+v, invalid %s %+v", s.Status.Phase, fresh, c,
			inv.Status.Phase, ic)
	})
	if inv := get("invalid"); inv.Status.AttemptCount != 0 {
		t.Errorf("invalid: %d attempts, want none", inv.Status.AttemptCount)
	}
	c := meta.FindStatusCondition(get("already-built").Status.Conditions, farmv1.BuildConditionSucceeded)
	if c == nil || c.Reason != "OutputsAvailable" || get("already-built").Status.AttemptCount != 0 {
		t.Errorf("already-built: condition %+v; want Succeeded by OutputsAvailable without an attempt", c)
	}
	t.Logf("missing .drv: %s", meta.FindStatusCondition(get("missing").Status.Conditions, farmv1.BuildConditionDerivationReadable).Message)
}

// unsignedBucket starts MinIO with a bucket "substitutes" and an unsigned publisher into it (the
// controller-side tests need the objects, not signatures).
func unsignedBucket(t *testing.T) (bucket.Config, *bucket.Publisher) {
	t.Helper()
	m := testbed.StartMinIO(t)
	cfg := bucket.Config{Endpoint: m.Endpoint, Bucket: "substitutes", AccessKey: m.AccessKey, SecretKey: m.SecretKey, AllowUnsigned: true}
	pub, err := bucket.NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.EnsureBucket(context.Background()); err != nil {
		t.Fatal(err)
	}
	return cfg, pub
}

// publishBuiltElsewhere publishes an "out" output for drv (one of drvs), as if built elsewhere.
func publishBuiltElsewhere(t *testing.T, pub *bucket.Publisher, drvs *farm.Drvs, drv string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(drvs.Dir, filepath.Base(drv)))
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := derivation.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	if err := os.WriteFile(out, []byte("built elsewhere\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(context.Background(), bucket.DiskItem(parsed.OutputPaths()["out"], out)); err != nil {
		t.Fatalf("publishing the output of %s: %v", drv, err)
	}
}

// switchStore is the bucket as the availability owner sees it, through a reader with wrong
// credentials until the test fixes them.
type switchStore struct {
	bad, good *bucket.Reader
	fixed     atomic.Bool
}

func (s *switchStore) Present(ctx context.Context, path string) (bool, error) {
	if s.fixed.Load() {
		return s.good.Present(ctx, path)
	}
	return s.bad.Present(ctx, path)
}

// TestSkipCheckSurvivesBucketErrors: with the bucket's credentials wrong, a Build with
// skipIfOutputsAvailable says so (OutputsChecked=False naming the bucket's error) instead of
// stalling, and ends Succeeded without building once the credentials are right.
func TestSkipCheckSurvivesBucketErrors(t *testing.T) {
	ctx := context.Background()
	cfg, pub := unsignedBucket(t)
	drvs := farm.NewDrvs(t)
	built := drvs.Add(t, "built-elsewhere", "x86_64-linux", 1)
	publishBuiltElsewhere(t, pub, drvs, built)
	badCfg := cfg
	badCfg.SecretKey = "not-the-secret-key"
	store := &switchStore{}
	var err error
	if store.bad, err = bucket.NewReader(badCfg, bucket.ReaderOptions{}); err != nil {
		t.Fatal(err)
	}
	if store.good, err = bucket.NewReader(cfg, bucket.ReaderOptions{}); err != nil {
		t.Fatal(err)
	}
	ns := env.Namespace(t, "skiperr")
	env.StartController(t, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.Basic, Bucket: store})
	b := farm.MakeBuild("skip-me", ns, built).Obj()
	b.Spec.SkipIfOutputsAvailable = true
	if err := env.Client.Create(ctx, b); err != nil {
		t.Fatal(err)
	}
	get := func() *farmv1.Build {
		x := &farmv1.Build{}
		_ = env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "skip-me"}, x)
		return x
	}
	var c *metav1.Condition
	waitFor(t, 30*time.Second, "the bucket error to show on the Build", func() (bool, string) {
		x := get()
		c = meta.FindStatusCondition(x.Status.Conditions, farmv1.BuildConditionOutputsChecked)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == "BucketError", fmt.Sprintf("%s %+v", x.Status.Phase, x.Status.Conditions)
	})
	t.Logf("with wrong credentials: %s", c.Message)
	if x := get(); x.Status.Phase.Finished() {
		t.Fatalf("the Build ended %s while the bucket could not answer", x.Status.Phase)
	}
	store.fixed.Store(true)
	waitFor(t, 30*time.Second, "the Build to end Succeeded once the credentials are right", func() (bool, string) {
		x := get()
		return x.Status.Phase == farmv1.BuildSucceeded, fmt.Sprintf("%s %+v", x.Status.Phase, x.Status.Conditions)
	})
	x := get()
	if c := meta.FindStatusCondition(x.Status.Conditions, farmv1.BuildConditionSucceeded); c == nil || c.Reason != "OutputsAvailable" || x.Status.AttemptCount != 0 {
		t.Errorf("condition %+v, %d attempts; want Succeeded by OutputsAvailable without an attempt", c, x.Status.AttemptCount)
	}
	if meta.FindStatusCondition(x.Status.Conditions, farmv1.BuildConditionOutputsChecked) != nil {
		t.Error("the OutputsChecked condition stayed after the bucket answered")
	}
}
