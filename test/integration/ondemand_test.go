package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/minio/minio-go/v7"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/buildname"
	"github.com/guixfarm/guix-farm/internal/daemon"
	"github.com/guixfarm/guix-farm/internal/gc"
	"github.com/guixfarm/guix-farm/internal/gc/bucketgc"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/internal/storepath"
	"github.com/guixfarm/guix-farm/test/farm"
)

// TestMissingInputsBuiltOnDemand: the top of a 3-level chain, submitted alone (neither
// spec.ensureInputBuilds nor --all-missing), is built on the real farm: the agents' missing-input
// reports make the controller create Builds for the inputs (named as kubectl guixfarm submit
// names them), which build first, then the top. No attempt is spent on the reports.
func TestMissingInputsBuiltOnDemand(t *testing.T) {
	start := time.Now()
	f := startRealFarm(t)
	f.instantiate(t)
	f.submitBuilds(t, nil, "chain2")
	f.startAgents(t)
	for _, a := range []string{"chain0", "chain1"} {
		name, err := buildname.For(f.builds[a].drv)
		if err != nil {
			t.Fatal(err)
		}
		f.builds[a].name = name // the controller creates it under this name
	}
	waitFor(t, 3*time.Minute, "the chain to build from its top alone", func() (bool, string) {
		var state string
		for _, a := range []string{"chain0", "chain1", "chain2"} {
			b := &farmv1.Build{}
			if err := env.Client.Get(t.Context(), client.ObjectKey{Namespace: f.ns, Name: f.builds[a].name}, b); err != nil {
				state += fmt.Sprintf(" %s: no Build yet;", a)
				continue
			}
			if b.Status.Phase.Finished() && b.Status.Phase != farmv1.BuildSucceeded {
				t.Fatalf("build %s ended %s: %+v", b.Name, b.Status.Phase, b.Status)
			}
			state += fmt.Sprintf(" %s: %s;", a, rbState(b))
		}
		return f.get(t, f.builds["chain2"].name).Status.Phase == farmv1.BuildSucceeded, state
	})
	t.Logf("chain built from its top alone in %s", time.Since(start).Round(100*time.Millisecond))
	f.checkOutputs(t, "chain2")
	for _, a := range []string{"chain0", "chain1", "chain2"} {
		b := f.get(t, f.builds[a].name)
		if b.Status.AttemptCount != 1 {
			t.Errorf("%s: %d attempts, want 1 (missing-input releases spend none)", b.Name, b.Status.AttemptCount)
		}
		if a != "chain2" && b.Annotations["build.guixfarm.io/created-for"] == "" {
			t.Errorf("%s: no created-for annotation", b.Name)
		}
	}
}

// TestInputsFromTheBucketAndFailedInputs, on the real farm with the derivation-ordered strategy:
//   - a dependent whose inputs' outputs were published to the bucket beforehand (built
//     elsewhere, not by the farm) starts at once: no Build is made for them, nothing waits on a
//     timeout;
//   - an input whose Build fails for good fails none of its dependents: within seconds their
//     InputsPending condition names the failed Build and its reason (InputFailed), and a new Build
//     of the input, once it can succeed, lets them finish.
func TestInputsFromTheBucketAndFailedInputs(t *testing.T) {
	f := startRealFarm(t)
	f.instantiate(t)
	// chain1 and chain0 built by the submitter's own daemon and published from there.
	f.submit.MustRun(t, "nix-store", "--realise", f.builds["chain1"].drv)
	f.publishOutputs(t, f.builds["chain1"].outs["out"])

	f.submitBuilds(t, nil, "chain2", "gated", "afterGated")
	f.setRetry(t, "gated", 1, 1)
	f.startAgents(t)

	f.waitSucceeded(t, time.Minute, "chain2")
	f.checkOutputs(t, "chain2")
	for _, a := range []string{"chain0", "chain1"} {
		name, _ := buildname.For(f.builds[a].drv)
		b := &farmv1.Build{}
		if err := env.Client.Get(t.Context(), client.ObjectKey{Namespace: f.ns, Name: name}, b); err == nil {
			t.Errorf("a Build %s was made for %s, whose outputs were in the bucket: %s", name, a, rbState(b))
		}
	}

	gated := f.waitPhase(t, time.Minute, "gated", farmv1.BuildFailed)
	failedAt := gated.Status.CompletionTime.Time
	var cond *metav1.Condition
	waitFor(t, 10*time.Second, "the dependent to name its failed input", func() (bool, string) {
		b := f.byAttr(t, "afterGated")
		cond = meta.FindStatusCondition(b.Status.Conditions, farmv1.BuildConditionInputsPending)
		ok := cond != nil && cond.Reason == string(planner.InputFailed) && strings.Contains(cond.Message, gated.Name)
		return ok, fmt.Sprintf("%s, InputsPending %+v", rbState(b), cond)
	})
	t.Logf("dependent names its failed input %s after the failure: %s", time.Since(failedAt).Round(time.Second), cond.Message)
	if b := f.byAttr(t, "afterGated"); b.Status.Phase.Finished() || b.Status.AttemptCount != 0 {
		t.Errorf("the dependent of a failed input: %s; want Pending, no attempt", rbState(b))
	}

	// The user fixes what made it fail and builds it again under another name.
	if err := os.WriteFile(filepath.Join(f.flakyDir, f.nonce+"-gate"), []byte("open\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	retry := farm.MakeBuild("gated-again", f.ns, f.builds["gated"].drv).Obj()
	if err := env.Client.Create(t.Context(), retry); err != nil {
		t.Fatal(err)
	}
	f.waitSucceeded(t, time.Minute, "afterGated")
	f.checkOutputs(t, "afterGated")
}

// publishOutputs publishes the closure of paths from the submitter's store to the farm's bucket,
// signed with the farm's keys, as another builder of the same derivations would.
func (f *rbFarm) publishOutputs(t testing.TB, paths ...string) {
	t.Helper()
	ctx := t.Context()
	conn, err := daemon.Dial(ctx, f.submit.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	infos, err := conn.Closure(ctx, paths, 1000)
	if err != nil {
		t.Fatal(err)
	}
	nars := daemon.NewPool(f.submit.Socket, 2)
	defer nars.Close()
	items := make([]bucket.StoreItem, len(infos))
	for i, info := range infos {
		items[i] = bucket.StoreItem{StorePath: info.Path, References: info.References, Deriver: info.Deriver, CA: info.CA,
			NarHash: info.NarHash, NarSize: info.NarSize,
			Open: func(ctx context.Context) (io.ReadCloser, error) { return nars.OpenNar(ctx, info.Path) }}
	}
	if _, err := f.pub.PublishClosure(ctx, items, 0); err != nil {
		t.Fatalf("publishing %v: %v", paths, err)
	}
}

// TestLostOutputsRebuilt: outputs the farm built are lost after their Builds were deleted (as by
// the TTL): chain0's by the farm's GC (roots policy), leaf0's nar alone by hand, and both from
// the agents' stores. New dependents,
// submitted alone, lead to the lost inputs being built again, never to a Build marked Succeeded
// on outputs that are gone, and never to a wait without end.
func TestLostOutputsRebuilt(t *testing.T) {
	f := startRealFarm(t)
	f.instantiate(t)
	leaves := make([]string, 10)
	for i := range leaves {
		leaves[i] = fmt.Sprintf("leaf%d", i)
	}
	f.submitBuilds(t, nil, append([]string{"chain0"}, leaves...)...)
	f.startAgents(t)
	f.waitSucceeded(t, time.Minute, append([]string{"chain0"}, leaves...)...)
	for _, a := range append([]string{"chain0"}, leaves...) {
		if err := env.Client.Delete(t.Context(), f.byAttr(t, a)); err != nil {
			t.Fatal(err)
		}
	}
	// leaf0's nar, by hand; then the farm's GC, under a roots policy whose list keeps busybox and
	// the leaves (leaf0's narinfo too: the GC reports its missing nar and leaves it to the farm),
	// deletes what no root reaches: chain0's output, and the .drv files nothing needs now.
	f.removeNar(t, f.builds["leaf0"].outs["out"])
	roots := f.bb + "\n"
	for _, l := range leaves {
		roots += f.builds[l].outs["out"] + "\n"
	}
	if _, err := f.minio.Client.PutObject(t.Context(), rbBucket, "gc/roots", strings.NewReader(roots), int64(len(roots)),
		minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	gcClient, err := bucket.NewClient(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := bucketgc.Run(t.Context(), bucketgc.Options{Client: gcClient, Bucket: rbBucket, Mode: gc.ModeRoots,
		RootsKey: "gc/roots", Grace: time.Nanosecond, Clock: clocktesting.NewFakePassiveClock(time.Now().Add(time.Hour)),
		Log: testr.New(t), Roots: controllers.BuildRoots{Client: env.Client, Namespace: f.ns, Facts: f.facts},
		OnDeleted: controllers.OutputsDeleted(f.owner)})
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := f.minio.Get(t, f.bucketURL+"/"+narinfoKey(t, f.builds["chain0"].outs["out"])); code != 404 {
		t.Fatalf("the GC left chain0's narinfo (HTTP %d); its report:\n%+v", code, rep)
	}
	// And from the agents' stores, or the agent that has them would publish them again with its
	// next closure, which heals the bucket instead of testing the rebuild.
	for _, d := range f.daemons {
		for _, a := range []string{"chain0", "leaf0"} {
			if _, err := d.Run(t.Context(), "nix-store", "--delete", f.builds[a].outs["out"]); err != nil {
				t.Logf("deleting %s from an agent's store: %v (it may not have it)", a, err)
			}
		}
	}

	f.submitBuilds(t, nil, "chain1", "fanin")
	for _, a := range []string{"chain0", "leaf0"} {
		f.builds[a].name, _ = buildname.For(f.builds[a].drv) // the controller rebuilds them under this name
	}
	waitFor(t, 3*time.Minute, "the dependents of lost outputs to build", func() (bool, string) {
		var state string
		done := true
		for _, a := range []string{"chain0", "leaf0", "chain1", "fanin"} {
			b := &farmv1.Build{}
			if err := env.Client.Get(t.Context(), client.ObjectKey{Namespace: f.ns, Name: f.builds[a].name}, b); err != nil {
				state += fmt.Sprintf(" %s: no Build;", a)
				done = false
				continue
			}
			if b.Status.Phase.Finished() && b.Status.Phase != farmv1.BuildSucceeded {
				t.Fatalf("build %s ended %s: %+v", b.Name, b.Status.Phase, b.Status)
			}
			done = done && b.Status.Phase == farmv1.BuildSucceeded
			state += fmt.Sprintf(" %s: %s;", a, rbState(b))
		}
		return done, state
	})
	for _, a := range []string{"chain0", "leaf0"} {
		b := f.get(t, f.builds[a].name)
		if c := meta.FindStatusCondition(b.Status.Conditions, farmv1.BuildConditionSucceeded); c == nil || c.Reason != farmv1.ReasonSucceeded || b.Status.AttemptCount != 1 {
			t.Errorf("%s: %s, Succeeded condition %+v; want built again (one attempt), not skipped", b.Name, rbState(b), c)
		}
	}
	f.checkOutputs(t, "chain1")
	f.checkOutputs(t, "fanin")
	f.checkBucket(t, 14) // chain0-1, 10 leaves, fan-in, busybox
}

// narinfoKey is path's narinfo object key.
func narinfoKey(t *testing.T, path string) string {
	sp, err := storepath.ParseAny(path)
	if err != nil {
		t.Fatal(err)
	}
	return bucket.NarInfoKey(sp)
}

// removeNar deletes path's nar from the bucket, leaving its narinfo.
func (f *rbFarm) removeNar(t *testing.T, path string) {
	t.Helper()
	url := f.narinfo(t, path).URL
	if err := f.minio.Client.RemoveObject(t.Context(), rbBucket, url, minio.RemoveObjectOptions{}); err != nil {
		t.Fatalf("removing %s: %v", url, err)
	}
}
