package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/guixfarm/guix-farm/agent/testbuilder"
	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/buildname"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/test/farm"
)

// TestDerivationOrdered: with the derivation-ordered strategy a DAG of builds starts only in
// dependency order (asserted from the recorded start and end times), and prerequisites of the
// urgent leaf inherit its priority.
func TestDerivationOrdered(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "ordered")
	drvs := farm.NewDrvs(t)
	env.StartController(t, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.DerivationOrdered})
	kc := env.Kubeconfig(t)
	record := filepath.Join(t.TempDir(), "attempts.jsonl")

	// A distribution in miniature: a bootstrap chain, a library every package needs (a diamond),
	// and packages on top of it.
	const sys = "x86_64-linux"
	inputs := map[string][]string{}
	boot0 := drvs.Add(t, "boot0", sys, 0)
	boot1 := drvs.Add(t, "boot1", sys, 1, boot0)
	boot2 := drvs.Add(t, "boot2", sys, 2, boot1)
	libc := drvs.Add(t, "libc", sys, 3, boot2)
	zlib := drvs.Add(t, "zlib", sys, 4, libc)
	ssl := drvs.Add(t, "openssl", sys, 5, libc, zlib)
	inputs[boot1], inputs[boot2], inputs[libc] = []string{boot0}, []string{boot1}, []string{boot2}
	inputs[zlib], inputs[ssl] = []string{libc}, []string{libc, zlib}
	all := []string{boot0, boot1, boot2, libc, zlib, ssl}
	for i := range 10 {
		p := drvs.Add(t, fmt.Sprintf("app%d", i), sys, 10+i, ssl, zlib)
		inputs[p] = []string{ssl, zlib}
		all = append(all, p)
	}
	names := map[string]string{}
	// Submit leaves first, so submission order alone would get the order wrong.
	for i := len(all) - 1; i >= 0; i-- {
		name := fmt.Sprintf("n%02d", i)
		names[all[i]] = ns + "/" + name
		if err := env.Client.Create(ctx, farm.MakeBuild(name, ns, all[i]).Obj()); err != nil {
			t.Fatal(err)
		}
	}
	// A second Build of boot0 (a manual retry is a new Build) that is deleted once finished.
	ttl := farm.MakeBuild("ttl", ns, boot0).Obj()
	ttl.Spec.TTLSecondsAfterFinished = ptr.To[int32](1)
	if err := env.Client.Create(ctx, ttl); err != nil {
		t.Fatal(err)
	}
	var agents []*farm.AgentProcess
	for i := range 2 {
		agents = append(agents, env.StartAgent(t, kc, ns, farm.AgentSpec{Name: fmt.Sprintf("ord-%d", i),
			Systems: []string{sys}, Slots: 2, TestDuration: 100 * time.Millisecond, LeaseDuration: 5 * time.Second, Record: record}))
	}
	waitFor(t, 2*time.Minute, "the DAG to build", func() (bool, string) {
		bs := listBuilds(t, ns)
		p := phases(bs)
		return p[farmv1.BuildSucceeded] == len(all) && len(bs) == len(all), fmt.Sprint(p, len(bs), " builds")
	})
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(ttl), ttl); !apierrors.IsNotFound(err) {
		t.Errorf("build with ttlSecondsAfterFinished=1 still there after it finished: %v", err)
	}

	// Nothing is lost here, so no agent ever acts on a stale cached copy of a build it reported.
	for _, a := range agents {
		if log := a.Log(t); strings.Contains(log, "no longer ours") {
			t.Errorf("agent %s acted on a build it had already reported (a stale cache copy)", a.Name)
		}
	}

	recs, err := testbuilder.ReadRecords(record)
	if err != nil {
		t.Fatal(err)
	}
	// A derivation's outputs exist from its earliest successful end: boot0 is built twice (n00 and
	// ttl), and boot1 may rightly start between the two.
	start, end := map[string]time.Time{}, map[string]time.Time{}
	for _, r := range recs {
		switch {
		case r.Event == "start" && (start[r.Drv].IsZero() || r.Time.Before(start[r.Drv])):
			start[r.Drv] = r.Time
		case r.Event == "end" && r.Result == "succeeded" && (end[r.Drv].IsZero() || r.Time.Before(end[r.Drv])):
			end[r.Drv] = r.Time
		}
	}
	for drv, ins := range inputs {
		for _, in := range ins {
			if !start[drv].After(end[in]) {
				t.Errorf("%s started at %s before its input %s finished at %s", names[drv],
					start[drv].Format(time.StampMicro), names[in], end[in].Format(time.StampMicro))
			}
		}
	}
}

// TestEnsureInputBuilds: a Build asking for its inputs to be built gets a Build for every input
// derivation nobody builds, transitively, at its priority, named as kubectl guixfarm submit names
// it; with the derivation-ordered strategy the chain then builds bottom-up. The inputs are named
// like a distribution's packages: long, with underscores, dots and plus signs, and the top
// Build's name is longer than a label value.
func TestEnsureInputBuilds(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "inputs")
	drvs := farm.NewDrvs(t)
	env.StartController(t, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.DerivationOrdered})
	const sys = "x86_64-linux"
	a := drvs.Add(t, "texlive-latex-base_2024.2+git.3a5c9e1-with-documentation-and-fonts-source", sys, 1)
	b := drvs.Add(t, "python-scikit-learn-extra__1.0.0.post1+cuda12.4-tests-disabled-x86_64", sys, 2, a)
	c := drvs.Add(t, "gcc-toolchain-14.2.0+bootstrap", sys, 3, b)
	topName := "top-" + strings.Repeat("x", 70) // past a label value's 63 characters
	top := farm.MakeBuild(topName, ns, c).Priority(42).Obj()
	top.Spec.EnsureInputBuilds = true
	if err := env.Client.Create(ctx, top); err != nil {
		t.Fatal(err)
	}
	env.StartAgent(t, env.Kubeconfig(t), ns, farm.AgentSpec{Name: "inputs-0", Systems: []string{sys}, Slots: 1,
		TestDuration: 50 * time.Millisecond, LeaseDuration: 5 * time.Second, Record: filepath.Join(t.TempDir(), "r.jsonl")})
	waitFor(t, time.Minute, "the chain to build", func() (bool, string) {
		bs := listBuilds(t, ns)
		p := phases(bs)
		return len(bs) == 3 && p[farmv1.BuildSucceeded] == 3, fmt.Sprint(len(bs), " builds ", p)
	})
	for _, x := range listBuilds(t, ns) {
		if x.Name == topName {
			continue
		}
		want, err := buildname.For(x.Spec.Derivation)
		if err != nil {
			t.Fatal(err)
		}
		if x.Name != want || x.Spec.Priority != 42 || x.Annotations["build.guixfarm.io/created-for"] == "" {
			t.Errorf("input build %s: priority %d, annotations %v; want the name %s, 42 and a created-for annotation",
				x.Name, x.Spec.Priority, x.Annotations, want)
		}
	}
}
