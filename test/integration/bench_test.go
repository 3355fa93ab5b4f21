package integration

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/guixfarm/guix-farm/agent"
	"github.com/guixfarm/guix-farm/agent/buildstep"
	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/test/farm"
)

// noop builds nothing, at once.
type noop struct{}

func (noop) Run(_ context.Context, req buildstep.Request) (buildstep.Result, error) {
	return buildstep.Result{Outputs: req.Outputs}, nil
}

// BenchmarkThroughput carries Builds from Pending to Succeeded with a no-op builder and 10 agents,
// and measures, in the same run against the same apiserver, the rate of plain status updates from
// 10 writers: the ratio says how much of the apiserver's write capacity the farm turns into builds.
func BenchmarkThroughput(b *testing.B) {
	const builds, agents = 500, 10
	ctx := context.Background()
	ns := env.Namespace(b, "throughput")
	drvs := farm.NewDrvs(b)
	paths := make([]string, builds)
	for i := range paths {
		paths[i] = drvs.Add(b, fmt.Sprintf("p%04d", i), "x86_64-linux", i)
	}
	env.StartController(b, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.Basic, Log: logr.Discard()})
	for i := range agents {
		env.StartInProcessAgent(b, ctx, agent.Config{Name: fmt.Sprintf("tp-%d", i), Namespace: ns, Systems: []string{"x86_64-linux"},
			Slots: 4, LeaseDuration: 30 * time.Second}, noop{}, logr.Discard())
	}
	succeeded := 0
	batch := func(prefix string, n int) time.Duration { // creates n Builds, waits until all succeeded
		start := time.Now()
		parallel(agents, n, func(i int) error {
			return env.Client.Create(ctx, farm.MakeBuild(fmt.Sprintf("%s-%04d", prefix, i), ns, paths[i]).Obj())
		})
		succeeded += n
		for {
			var l farmv1.BuildList
			if err := env.Client.List(ctx, &l, client.InNamespace(ns)); err != nil {
				b.Fatal(err)
			}
			done := 0
			for _, x := range l.Items {
				if x.Status.Phase == farmv1.BuildSucceeded {
					done++
				}
			}
			if done == succeeded {
				return time.Since(start)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// A steady-state rate: the first builds also pay for the caches' first sync, the planner's
	// first full plan and the apiserver's first CEL compilations, so one untimed batch goes first.
	batch("warmup", builds/5)
	var total time.Duration
	for n := 0; b.Loop(); n++ {
		total += batch(fmt.Sprintf("r%d", n), builds)
	}
	buildRate := float64(b.N*builds) / total.Seconds()

	// The baseline: status updates of Builds in a namespace no controller watches.
	bns := env.Namespace(b, "updates")
	objs := make([]*farmv1.Build, agents*10)
	for i := range objs {
		objs[i] = farm.MakeBuild(fmt.Sprintf("u%03d", i), bns, paths[i]).Obj()
		if err := env.Client.Create(ctx, objs[i]); err != nil {
			b.Fatal(err)
		}
	}
	var updates atomic.Int64
	start := time.Now()
	window := 3 * time.Second
	var wg sync.WaitGroup
	for w := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; time.Since(start) < window; k++ {
				o := objs[w*10+k%10]
				o.Status.AttemptCount++
				if err := env.Client.Status().Update(ctx, o); err != nil {
					b.Error(err)
					return
				}
				updates.Add(1)
			}
		}()
	}
	wg.Wait()
	updateRate := float64(updates.Load()) / time.Since(start).Seconds()
	b.ReportMetric(buildRate, "builds/s")
	b.ReportMetric(updateRate, "updates/s")
	b.ReportMetric(buildRate/updateRate, "builds/update")
}

// BenchmarkEtcdBytesPerBuild reads, straight from etcd, what a pending Build costs: created by a
// client, its facts known to the controller's planner, waiting in the queue for an agent of its
// pool past the controller's FactsDelay (with WriteQueueStatus its facts would be written then).
func BenchmarkEtcdBytesPerBuild(b *testing.B) {
	const n = 200
	ctx := context.Background()
	ns := env.Namespace(b, "etcdsize")
	drvs := farm.NewDrvs(b)
	f := env.StartController(b, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.Basic, Log: logr.Discard()})
	// A pool serves the system, at zero agents: the Builds wait in the queue, as most of a farm's do.
	pool := &farmv1.AgentPool{ObjectMeta: metav1.ObjectMeta{Name: "x86", Namespace: ns},
		Spec: farmv1.AgentPoolSpec{Systems: []string{"x86_64-linux"}, Replicas: ptr.To[int32](0)}}
	if err := env.Client.Create(ctx, pool); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		bl := farm.MakeBuild(fmt.Sprintf("hello-%04d", i), ns, drvs.Add(b, fmt.Sprintf("hello-2.12.%d", i), "x86_64-linux", i)).
			Priority(int32(i%10)).Label("tag", "bench").Obj()
		if err := env.Client.Create(ctx, bl); err != nil {
			b.Fatal(err)
		}
	}
	waitFor(b, time.Minute, "the planner to know every Build's facts", func() (bool, string) {
		k := f.Loop.Planner().Stats().Pending["x86_64-linux"]
		return k == n, fmt.Sprintf("%d of %d", k, n)
	})
	time.Sleep(build2FactsDelay)
	var perBuild float64
	for b.Loop() {
		total, count := etcdBytes(b, "/registry/build.guixfarm.io/builds/"+ns+"/")
		if count != n {
			b.Fatalf("etcd holds %d builds, want %d", count, n)
		}
		perBuild = float64(total) / float64(count)
	}
	b.ReportMetric(perBuild, "bytes/build")
}

// etcdBytes sums the stored values under prefix through etcd's JSON gateway.
func etcdBytes(b *testing.B, prefix string) (total, count int) {
	sh := etcdShares(b, prefix)
	return sh.total, sh.count
}

// etcdShare is what the objects under a prefix cost in etcd, and which parts of them: the
// managed fields (server-side apply bookkeeping) and the status are the two parts of a queued
// Build a smaller object could drop (docs/scale.md).
type etcdShare struct {
	total, count, managedFields, status int
}

// etcdShares reads the stored values under prefix through etcd's JSON gateway. CRs are stored
// as compact JSON, so a part's cost is the length of its stored JSON text.
func etcdShares(b *testing.B, prefix string) etcdShare {
	end := []byte(prefix)
	end[len(end)-1]++
	req, _ := json.Marshal(map[string]string{
		"key":       base64.StdEncoding.EncodeToString([]byte(prefix)),
		"range_end": base64.StdEncoding.EncodeToString(end),
	})
	u := env.Env.ControlPlane.Etcd.URL.String() + "/v3/kv/range"
	resp, err := http.Post(u, "application/json", bytes.NewReader(req))
	if err != nil {
		b.Fatalf("reading etcd: %v", err)
	}
	defer resp.Body.Close()
	var out struct {
		Kvs []struct {
			Value string `json:"value"`
		} `json:"kvs"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		b.Fatalf("decoding etcd's answer: %v", err)
	}
	var sh etcdShare
	for i, kv := range out.Kvs {
		v, _ := base64.StdEncoding.DecodeString(kv.Value)
		if i == 0 && testing.Verbose() {
			b.Logf("one stored Build (%d bytes):\n%s", len(v), v)
		}
		sh.total += len(v)
		var obj struct {
			Metadata struct {
				ManagedFields json.RawMessage `json:"managedFields"`
			} `json:"metadata"`
			Status json.RawMessage `json:"status"`
		}
		if json.Unmarshal(v, &obj) == nil {
			sh.managedFields += len(obj.Metadata.ManagedFields)
			sh.status += len(obj.Status)
		}
	}
	sh.count = len(out.Kvs)
	return sh
}

// parallel runs f(0..n-1) on w workers and fails the benchmark on the first error.
func parallel(w, n int, f func(i int) error) {
	var wg sync.WaitGroup
	next := atomic.Int64{}
	errs := make(chan error, w)
	for range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		panic(err)
	}
}
