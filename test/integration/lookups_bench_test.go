package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/test/farm"
)

// countingStore is a bucket that has everything, counting the questions.
type countingStore struct{ n atomic.Int64 }

func (s *countingStore) Present(context.Context, string) (bool, error) {
	s.n.Add(1)
	return true, nil
}

// BenchmarkBucketLookups10k: 10,000 Builds, derivation-ordered, whose inputs (2,000 derivations
// no Build produces, 3 per Build: 30,000 references) are all in the bucket, loaded into the
// controller (in-process, the bucket a counter that has everything). Reported: lookups (bucket
// questions until every Build is modelled and none waits on inputs), x_per_reference (lookups
// over the 30,000 input references: 1 would be one request per input per Build),
// lookups-per-plan (questions per planning pass once loaded, over 20 passes) and ready-s (from
// the first create until no Build waits on inputs).
func BenchmarkBucketLookups10k(b *testing.B) {
	const builds, inputs, perBuild = 10_000, 2_000, 3
	ctx := context.Background()
	drvs := farm.NewDrvs(b)
	base := make([]string, inputs)
	for i := range base {
		base[i] = drvs.Add(b, fmt.Sprintf("base-%04d", i), "x86_64-linux", i)
	}
	rng := rand.New(rand.NewPCG(10_000, 3))
	paths := make([]string, builds)
	for i := range paths {
		var in []string
		for range perBuild {
			in = append(in, base[rng.IntN(inputs)])
		}
		paths[i] = drvs.Add(b, fmt.Sprintf("app-%05d", i), "x86_64-linux", i, dedup(in)...)
	}
	var lookups, perPlan, ready float64
	for range b.N {
		store := &countingStore{}
		ns := env.Namespace(b, "lookups")
		loop := env.StartController(b, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.DerivationOrdered,
			Bucket: store, Log: logr.Discard()}).Loop
		start := time.Now()
		parallel(16, builds, func(i int) error {
			return env.Client.Create(ctx, farm.MakeBuild(fmt.Sprintf("app-%05d", i), ns, paths[i]).Obj())
		})
		p := loop.Planner()
		deadline := time.Now().Add(5 * time.Minute)
		for {
			st := p.Stats()
			if st.Pending["x86_64-linux"] == builds && st.Waiting[planner.InputsPending] == 0 {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("after 5 minutes: %+v", st)
			}
			time.Sleep(20 * time.Millisecond)
		}
		ready = time.Since(start).Seconds()
		lookups = float64(store.n.Load())
		before := store.n.Load()
		const passes = 20
		for range passes {
			loop.Kick()
			time.Sleep(50 * time.Millisecond) // past the debounce: one pass each
		}
		perPlan = float64(store.n.Load()-before) / passes
	}
	b.ReportMetric(lookups, "lookups")
	b.ReportMetric(lookups/float64(builds*perBuild), "x_per_reference")
	b.ReportMetric(perPlan, "lookups-per-plan")
	b.ReportMetric(ready, "ready-s")
}
