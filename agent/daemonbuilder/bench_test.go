package daemonbuilder

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/guixfarm/guix-farm/agent/buildstep"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/daemon"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// BenchmarkAgentOverhead: what the agent adds to a trivial build (busybox `echo > $out`, fresh
// each time). Each op is three fresh, equivalent derivations on the same agent daemon:
//   - one Builder.Run, end to end (options, EnsurePath of the .drv from the bucket, temp roots,
//     reading the .drv and its inputs' .drvs, input checks, BuildPaths, closure of the output,
//     publication to MinIO): run-ms;
//   - BuildPaths alone on a connection with the same options, the .drv already substituted
//     (untimed): daemon-build-ms, the daemon's own build time;
//   - Run's steps one by one with a clock between them: the phase metrics connect-ms (dial and
//     SetOptions), fetch-drv-ms (EnsurePath and AddTempRoot of the .drv), read-ms (reading and
//     parsing the .drv), inputs-ms (checkInputs), build-ms (BuildPaths), publish-ms;
//   - one more connection opened and closed: dial-ms.
//
// overhead-ms is run-ms - daemon-build-ms; x_overhead is overhead-ms / daemon-build-ms. One
// untimed op first substitutes busybox into the agent's store (a steady-state agent has its
// inputs).
func BenchmarkAgentOverhead(b *testing.B) {
	r := newRig(b)
	bld := r.builder(b, r.agent)
	ctx := context.Background()
	// submit instantiates a fresh trivial derivation and publishes its closure, untimed.
	submit := func() string {
		drv, _ := r.drv(b, "overhead", r.expr("overhead", `echo > $out`))
		return drv
	}

	run := func(drv string) time.Duration {
		start := time.Now()
		if _, err := bld.Run(ctx, request(drv, &logBuf{})); err != nil {
			b.Fatalf("Run: %v\n%s", err, r.agent.Logs())
		}
		return time.Since(start)
	}
	daemonBuild := func() time.Duration {
		drv := submit()
		conn, err := bld.connect(ctx, buildstep.Limits{})
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		if err := conn.EnsurePath(ctx, drv); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := conn.BuildPaths(ctx, []daemon.DerivedPath{{Drv: drv, Outputs: []string{"out"}}}, daemon.BuildNormal, func(daemon.LogLine) {}); err != nil {
			b.Fatalf("BuildPaths: %v", err)
		}
		return time.Since(start)
	}
	phaseNames := []string{"connect-ms", "fetch-drv-ms", "read-ms", "inputs-ms", "build-ms", "publish-ms"}
	phases := func() []time.Duration {
		drv := submit()
		req := request(drv, &logBuf{})
		var ds []time.Duration
		last := time.Now()
		lap := func(err error) {
			if err != nil {
				b.Fatalf("phase %s: %v", phaseNames[len(ds)], err)
			}
			now := time.Now()
			ds = append(ds, now.Sub(last))
			last = now
		}
		conn, err := bld.connect(ctx, req.Limits)
		lap(err)
		defer conn.Close()
		err = conn.EnsurePath(ctx, drv)
		if err == nil {
			err = conn.AddTempRoot(ctx, drv)
		}
		lap(err)
		d, err := bld.readDrv(ctx, conn, drv)
		lap(err)
		lap(bld.checkInputs(ctx, conn, d))
		outputs := outputNames(req, d)
		lap(bld.build(ctx, conn, req, outputs))
		_, err = bld.publish(ctx, conn, req, d, outputs)
		lap(err)
		return ds
	}

	run(submit()) // warm-up: busybox substituted into the agent's store
	daemonBuild()
	// dial is one more connection, opened and closed: what connect-ms and each item's nar
	// stream in publish-ms pay before any request (the daemon forks a worker per connection).
	dial := func() time.Duration {
		start := time.Now()
		conn, err := bld.dial(ctx)
		if err != nil {
			b.Fatal(err)
		}
		d := time.Since(start)
		conn.Close()
		return d
	}
	var runT, buildT, dialT time.Duration
	phaseT := make([]time.Duration, len(phaseNames))
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		for i, d := range phases() {
			phaseT[i] += d
		}
		bt := daemonBuild()
		dialT += dial()
		drv := submit()
		b.StartTimer()
		rt := run(drv)
		runT, buildT = runT+rt, buildT+bt
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return d.Seconds() * 1000 / float64(b.N) }
	overhead := ms(runT) - ms(buildT)
	b.ReportMetric(ms(runT), "run-ms")
	b.ReportMetric(ms(buildT), "daemon-build-ms")
	b.ReportMetric(overhead, "overhead-ms")
	if buildT > 0 {
		b.ReportMetric(overhead/ms(buildT), "x_overhead")
	}
	b.ReportMetric(ms(dialT), "dial-ms")
	for i, n := range phaseNames {
		b.ReportMetric(ms(phaseT[i]), n)
	}
}

// BenchmarkSampleDAG: the sample distribution of `make run` (hack/sample-farm.nix, hello and
// report, 10 derivations, 5 deep, seconds = 0 so every build is trivial) built by two
// daemonbuilder Builders on two agent daemons, Runs started in dependency order, at most one per
// agent (2 in parallel), inputs coming through the bucket; against `nix-store --realise -j 2` of
// the same .drvs on one daemon (nix-build without its evaluation, which the farm side does not
// time either). Instantiation and the .drvs' publication are untimed, and busybox is already in
// every store. farm-s and nix-s are the two wall times; x_nix is farm-s / nix-s.
func BenchmarkSampleDAG(b *testing.B) {
	expr, err := filepath.Abs("../../hack/sample-farm.nix")
	if err != nil {
		b.Fatal(err)
	}
	var farmT, nixT time.Duration
	for range b.N {
		b.StopTimer()
		f, n := sampleDAG(b, expr)
		farmT, nixT = farmT+f, nixT+n
	}
	b.ReportMetric(farmT.Seconds()/float64(b.N), "farm-s")
	b.ReportMetric(nixT.Seconds()/float64(b.N), "nix-s")
	if nixT > 0 {
		b.ReportMetric(farmT.Seconds()/nixT.Seconds(), "x_nix")
	}
}

// sampleDAG builds the sample on a fresh rig both ways and returns the two wall times.
func sampleDAG(b *testing.B, expr string) (farm, nix time.Duration) {
	r := newRig(b)
	agents := []*testbed.NixDaemon{r.agent, r.newAgent(b)}
	tops := strings.Fields(r.submit.MustRun(b, "nix-instantiate", expr, "--argstr", "bb", r.bb, "--argstr", "seconds", "0", "-A", "hello", "-A", "report"))
	r.publishFrom(b, r.submit, tops...)
	ctx := context.Background()

	// The DAG, from the .drvs in the submitter's store.
	deps := map[string][]string{}
	var order []string
	var visit func(p string)
	visit = func(p string) {
		if _, ok := deps[p]; ok {
			return
		}
		data, err := os.ReadFile(r.submit.HostPath(p))
		if err != nil {
			b.Fatal(err)
		}
		d, err := derivation.Parse(data)
		if err != nil {
			b.Fatal(err)
		}
		deps[p] = nil
		for _, in := range d.InputDrvs {
			deps[p] = append(deps[p], in.Path)
			visit(in.Path)
		}
		order = append(order, p)
	}
	for _, t := range tops {
		visit(t)
	}
	builders := make([]*Builder, len(agents))
	for i, a := range agents {
		builders[i] = r.builder(b, a)
		conn, err := builders[i].connect(ctx, buildstep.Limits{})
		if err != nil {
			b.Fatal(err)
		}
		if err := conn.EnsurePath(ctx, r.bb); err != nil { // busybox, as the nix side has it
			b.Fatal(err)
		}
		conn.Close()
	}

	// The farm: each agent takes the next ready derivation, in order, when it is free.
	b.StartTimer()
	start := time.Now()
	var mu sync.Mutex
	built := map[string]bool{}
	taken := map[string]bool{}
	wake := sync.NewCond(&mu)
	var failed error
	next := func() string { // with mu held: a ready derivation nobody took, or ""
		for _, p := range order {
			if taken[p] {
				continue
			}
			ready := true
			for _, d := range deps[p] {
				ready = ready && built[d]
			}
			if ready {
				return p
			}
		}
		return ""
	}
	var wg sync.WaitGroup
	for _, bld := range builders {
		wg.Go(func() {
			mu.Lock()
			defer mu.Unlock()
			for len(taken) < len(order) && failed == nil {
				p := next()
				if p == "" {
					wake.Wait()
					continue
				}
				taken[p] = true
				mu.Unlock()
				_, err := bld.Run(ctx, request(p, &logBuf{}))
				mu.Lock()
				if err != nil && failed == nil {
					failed = fmt.Errorf("Run %s: %w", p, err)
				}
				built[p] = true
				wake.Broadcast()
			}
		})
	}
	wg.Wait()
	farm = time.Since(start)
	b.StopTimer()
	if failed != nil {
		b.Fatal(failed)
	}

	// One daemon: the submitter (sandboxed like the agents, busybox in its store, no substituters).
	b.StartTimer()
	start = time.Now()
	r.submit.MustRun(b, append([]string{"nix-store", "--realise", "-j", "2"}, tops...)...)
	nix = time.Since(start)
	b.StopTimer()
	return farm, nix
}

// BenchmarkAgentPublish1000Small: the agent's publication path for 1,000 small store items in a
// daemon's store (the same generated items as internal/bucket's BenchmarkPublishClosure1000Small:
// 1–4 KiB of text, a binary tree of references plus a common one): Builder.closure (one
// QueryPathInfo per item on the attempt's connection) and BucketPublisher.Publish, which streams
// each nar through the daemon on a connection of its own (narOpener), into a fresh bucket. The
// same-run baseline is internal/bucket's BenchmarkNixCopy1000Small (hack/benchfmt).
func BenchmarkAgentPublish1000Small(b *testing.B) {
	benchSmallPublish(b, "small", Attempt{}, func(pub *bucket.Publisher) Publisher { return BucketPublisher{P: pub} })
}

// benchSmallPublish times the agent's whole publication path (closure query, nars streamed from
// the daemon, publish) of 1,000 small items into a fresh bucket per op, through the publisher
// publisher makes of that bucket's (untimed), and reports ms/op and items/s.
func benchSmallPublish(b *testing.B, bucketPrefix string, att Attempt, publisher func(*bucket.Publisher) Publisher) {
	m := testbed.StartMinIO(b)
	d := testbed.StartNixDaemon(b, testbed.NixOptions{NoSandbox: true})
	ctx := context.Background()
	paths := addSmallItems(b, d)
	key, err := signing.GenerateNixKey(rand.Reader, "farm-bench-1")
	if err != nil {
		b.Fatal(err)
	}
	var elapsed time.Duration
	for i := range b.N {
		b.StopTimer()
		pub, err := bucket.NewPublisher(bucket.Config{Endpoint: m.Endpoint, Bucket: fmt.Sprintf("%s%d", bucketPrefix, i), AccessKey: m.AccessKey,
			SecretKey: m.SecretKey, Keys: signing.Keys{Nix: []signing.NixSecretKey{key}}})
		if err != nil {
			b.Fatal(err)
		}
		if err := pub.EnsureBucket(ctx); err != nil {
			b.Fatal(err)
		}
		bld, err := New(Config{Socket: d.Socket}, publisher(pub), logr.Discard())
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		conn, err := bld.dial(ctx)
		if err != nil {
			b.Fatal(err)
		}
		items, err := bld.closure(ctx, conn, paths)
		if err == nil {
			_, err = bld.pub.Publish(ctx, att, items, nil)
		}
		conn.Close()
		elapsed += time.Since(start)
		bld.Close()
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		if len(items) != len(paths) {
			b.Fatalf("closure of %d items, want %d", len(items), len(paths))
		}
	}
	perOp := elapsed.Seconds() / float64(b.N)
	b.ReportMetric(perOp*1000, "ms/op")
	b.ReportMetric(float64(len(paths))/perOp, "items/s")
}

// addSmallItems adds testbed.AddSmallItems' 1,000 items to d's store (untimed).
func addSmallItems(b *testing.B, d *testbed.NixDaemon) []string {
	b.Helper()
	ctx := context.Background()
	conn, err := daemon.Dial(ctx, d.Socket)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	return testbed.AddSmallItems(b, 1000, func(name string, text []byte, refs []string) (string, error) {
		return conn.AddTextToStore(ctx, name, text, refs)
	})
}
