package integration

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/storepath"
	"github.com/guixfarm/guix-farm/test/farm"
)

// sampleDrvs is the number of derivations in the closure of hack/sample-farm.nix's hello and
// report: stage0, stage1, the toolchain, four libraries, split, hello, report.
const sampleDrvs = 10

// BenchmarkSampleDAGFarm: the sample distribution of `make run` (hack/sample-farm.nix, hello and
// report, 10 derivations, 5 deep, seconds = 0 so every build is trivial) through the whole farm
// as TestRealBuild runs it (startRealFarm: the apiserver, MinIO, the controller with the
// derivation-ordered strategy reading .drvs from the bucket, two agents running the agent
// binary, each building through its own sandboxed nix-daemon), against `nix-store --realise -j
// 2` of the same two .drvs on one daemon (nix-build without its evaluation).
//
// farm-s is timed from the start of `kubectl-guixfarm submit --all-missing` of the two tops
// (which publishes the .drv closure and creates the 10 Builds, inputs first, as `make run` does)
// until every Build of the namespace is seen Succeeded (through a watch, not by polling: see
// buildWatch). The two agents have 2 slots each, so the farm may run 4 builds at once where
// nix-store runs 2; on a 2-core machine that buys little. nix-s is timed around the realisation on
// the submitter's daemon, after the farm part: it is sandboxed like the agents' daemons, has
// busybox and no substituter, so it builds all 10. x_nix is farm-s / nix-s. ns/op is their sum.
//
// Not timed: starting the farm and its agents, instantiation, and busybox: it is added to the
// submitter's store, published to the bucket and substituted into each agent's daemon
// beforehand, so that both sides start with it in every store and the farm side's time is the
// DAG's alone. Each op starts a farm of its own (its cleanups run when the benchmark ends, so
// the farms of all ops live until then: run it with -benchtime=1x).
func BenchmarkSampleDAGFarm(b *testing.B) {
	var farmT, nixT time.Duration
	for range b.N {
		b.StopTimer()
		f, n := sampleDAGFarm(b)
		farmT, nixT = farmT+f, nixT+n
	}
	b.ReportMetric(farmT.Seconds()/float64(b.N), "farm-s")
	b.ReportMetric(nixT.Seconds()/float64(b.N), "nix-s")
	if nixT > 0 {
		b.ReportMetric(farmT.Seconds()/nixT.Seconds(), "x_nix")
	}
}

// sampleDAGFarm builds the sample on a fresh farm, then on the submitter's daemon alone, and
// returns the two wall times. It is called, and returns, with the timer stopped.
func sampleDAGFarm(b *testing.B) (farmT, nixT time.Duration) {
	f := startRealFarm(b)
	tops := f.instantiateSample(b)
	// startAgents substitutes busybox from the bucket into each agent's daemon (see there why);
	// TestRealBuild's first submission puts it in the bucket, here it is published untimed, and
	// the timed submission finds it there.
	if _, err := f.pub.Publish(context.Background(), bucket.DiskItem(f.bb, f.submit.HostPath(f.bb))); err != nil {
		b.Fatalf("publishing busybox: %v", err)
	}
	f.startAgents(b)
	// Opened before the clock starts, so the watch's setup is not timed.
	w := watchBuilds(b, f.ns, len(f.builds))

	b.StartTimer()
	start := time.Now()
	f.submitBuilds(b, []string{"--all-missing"}, "hello", "report")
	end := w.wait(b, 5*time.Minute)
	b.StopTimer()
	farmT = end.Sub(start)
	w.explain(b, f, start)

	b.StartTimer()
	start = time.Now()
	f.submit.MustRun(b, append([]string{"nix-store", "--realise", "-j", "2"}, tops...)...)
	nixT = time.Since(start)
	b.StopTimer()
	b.Logf("farm %s, nix-store --realise -j 2 %s", farmT.Round(time.Millisecond), nixT.Round(time.Millisecond))
	return farmT, nixT
}

// instantiateSample instantiates hack/sample-farm.nix's hello and report with seconds = 0 in the
// submitter's store and records the derivations of their closure in f.builds: the two tops under
// their attribute names, the inputs (which the file does not export) under their derivation
// names (stage0, toolchain-1.0, …). It returns the tops' .drv paths.
func (f *rbFarm) instantiateSample(tb testing.TB) []string {
	tb.Helper()
	expr := filepath.Join(farm.Root(), "hack", "sample-farm.nix")
	attrs := []string{"hello", "report"}
	tops := strings.Fields(f.submit.MustRun(tb, "nix-instantiate", expr, "--argstr", "bb", f.bb,
		"--argstr", "seconds", "0", "-A", attrs[0], "-A", attrs[1]))
	if len(tops) != len(attrs) {
		tb.Fatalf("nix-instantiate gave %v for %v", tops, attrs)
	}
	for _, p := range strings.Fields(f.submit.MustRun(tb, append([]string{"nix-store", "-q", "--requisites"}, tops...)...)) {
		if !strings.HasSuffix(p, storepath.DrvExt) {
			continue // busybox, the closure's one source
		}
		key := ""
		if i := slices.Index(tops, p); i >= 0 {
			key = attrs[i]
		} else {
			_, name, err := storepath.ParseBase(filepath.Base(p))
			if err != nil {
				tb.Fatal(err)
			}
			key = strings.TrimSuffix(name, storepath.DrvExt)
		}
		f.addBuild(tb, key, p)
	}
	if len(f.builds) != sampleDrvs {
		tb.Fatalf("the sample's closure holds %d derivations, want %d: %v", len(f.builds), sampleDrvs, f.builds)
	}
	return tops
}

// buildWatch follows the Builds of a namespace through a watch rather than by polling: each
// status write reaches it as the apiserver commits it, so the last Succeeded is seen within
// milliseconds, and it adds no List requests to a 2-core machine's apiserver while the farm
// works. It records when it first saw each Build in each phase ("" is its creation).
type buildWatch struct {
	ns   string
	want int
	done chan error // one value: nil once want Builds are all Succeeded
	// Written by the watching goroutine until it sends on done, read after.
	end   time.Time
	seen  map[string]map[farmv1.BuildPhase]time.Time
	agent map[string]string // the agent of the successful attempt
	tries map[string]int32
}

// watchBuilds starts watching ns until it holds want Builds, all Succeeded, or one ends otherwise.
func watchBuilds(tb testing.TB, ns string, want int) *buildWatch {
	tb.Helper()
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	// A watch from no resource version begins with an Added event per existing Build, so a
	// reopened one (the apiserver ends watches after a while) restores the whole state.
	open := func() (watch.Interface, error) {
		return wc.Watch(ctx, &farmv1.BuildList{}, client.InNamespace(ns))
	}
	wi, err := open()
	if err != nil {
		tb.Fatalf("watching the Builds of %s: %v", ns, err)
	}
	w := &buildWatch{ns: ns, want: want, done: make(chan error, 1), seen: map[string]map[farmv1.BuildPhase]time.Time{},
		agent: map[string]string{}, tries: map[string]int32{}}
	go func() { w.done <- w.run(ctx, wi, open) }()
	return w
}

func (w *buildWatch) run(ctx context.Context, wi watch.Interface, open func() (watch.Interface, error)) error {
	phase := map[string]farmv1.BuildPhase{}
	for {
		for ev := range wi.ResultChan() {
			now := time.Now()
			b, ok := ev.Object.(*farmv1.Build)
			if !ok { // an Error event: the watch ends, and is reopened below
				continue
			}
			if ev.Type == watch.Deleted {
				delete(phase, b.Name)
				continue
			}
			p := b.Status.Phase
			phase[b.Name] = p
			if w.seen[b.Name] == nil {
				w.seen[b.Name] = map[farmv1.BuildPhase]time.Time{}
			}
			if _, ok := w.seen[b.Name][p]; !ok {
				w.seen[b.Name][p] = now
			}
			switch p {
			case farmv1.BuildFailed, farmv1.BuildCanceled:
				wi.Stop()
				return fmt.Errorf("build %s ended %s: %+v", b.Name, p, b.Status)
			case farmv1.BuildSucceeded:
				if n := len(b.Status.Attempts); n > 0 {
					w.agent[b.Name] = b.Status.Attempts[n-1].Agent
				}
				w.tries[b.Name] = b.Status.AttemptCount
			}
			if len(phase) == w.want && !slices.ContainsFunc(slices.Collect(maps.Values(phase)), func(p farmv1.BuildPhase) bool {
				return p != farmv1.BuildSucceeded
			}) {
				w.end = now
				wi.Stop()
				return nil
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var err error
		if wi, err = open(); err != nil {
			return fmt.Errorf("reopening the watch: %w", err)
		}
	}
}

// wait returns when the last Build was seen Succeeded, failing if one ended otherwise or timeout
// passed first.
func (w *buildWatch) wait(tb testing.TB, timeout time.Duration) time.Time {
	tb.Helper()
	select {
	case err := <-w.done:
		if err != nil {
			tb.Fatal(err)
		}
		return w.end
	case <-time.After(timeout):
		bs := listBuilds(tb, w.ns)
		var states []string
		for _, b := range bs {
			states = append(states, b.Name+" "+rbState(&b))
		}
		tb.Fatalf("timed out after %s waiting for %d Builds to succeed: %s", timeout, w.want, strings.Join(states, "; "))
		return time.Time{}
	}
}

// explain logs where the farm's time went, from the phases' first sightings: when the last Build
// was created (the submission), then along the critical path (back from the last Build to
// succeed, through the input that succeeded last) and on average over all Builds, how long each
// Build waited once ready (created, its inputs succeeded) to be allocated, then to be claimed
// (which includes waiting for a free slot), then ran (the attempt: the .drv and inputs
// substituted from the bucket, the build, the outputs published). With -v, the whole timeline.
func (w *buildWatch) explain(tb testing.TB, f *rbFarm, start time.Time) {
	byName := map[string]*rbBuild{}
	byDrv := map[string]*rbBuild{}
	for _, rb := range f.builds {
		byName[rb.name], byDrv[rb.drv] = rb, rb
	}
	// at is when the Build was first seen in phase p, or in a later one if the watch saw none
	// in p (two writes between two events cannot happen, but a phase can be skipped).
	order := []farmv1.BuildPhase{"", farmv1.BuildAllocated, farmv1.BuildRunning, farmv1.BuildSucceeded}
	at := func(rb *rbBuild, p farmv1.BuildPhase) time.Time {
		for _, q := range order[slices.Index(order, p):] {
			if t, ok := w.seen[rb.name][q]; ok {
				return t
			}
		}
		return time.Time{}
	}
	ready := func(rb *rbBuild) (time.Time, *rbBuild) { // and the input it waited for last, if any
		t, last := at(rb, ""), (*rbBuild)(nil)
		for _, in := range rb.inputs {
			if s := at(byDrv[in], farmv1.BuildSucceeded); s.After(t) {
				t, last = s, byDrv[in]
			}
		}
		return t, last
	}
	ms := func(d time.Duration) int64 { return d.Milliseconds() }
	steps := func(rb *rbBuild) [3]time.Duration { // allocation, claim, run
		r, _ := ready(rb)
		a, c, s := at(rb, farmv1.BuildAllocated), at(rb, farmv1.BuildRunning), at(rb, farmv1.BuildSucceeded)
		return [3]time.Duration{a.Sub(r), c.Sub(a), s.Sub(c)}
	}

	var created, end time.Time
	var last *rbBuild
	var sum [3]time.Duration
	for _, rb := range f.builds {
		if t := at(rb, ""); t.After(created) {
			created = t
		}
		if t := at(rb, farmv1.BuildSucceeded); t.After(end) {
			end, last = t, rb
		}
		for i, d := range steps(rb) {
			sum[i] += d
		}
	}
	var path []string
	for rb := last; rb != nil; _, rb = ready(rb) {
		st := steps(rb)
		path = append(path, fmt.Sprintf("%s %d/%d/%d", rb.attr, ms(st[0]), ms(st[1]), ms(st[2])))
	}
	slices.Reverse(path)
	n := time.Duration(len(f.builds))
	tb.Logf("farm: the %d Builds created %d ms after the submission started, the last one succeeded after %d ms", len(f.builds),
		ms(created.Sub(start)), ms(end.Sub(start)))
	tb.Logf("critical path, ms from ready to allocated/claimed/succeeded: %s", strings.Join(path, ", "))
	var attempts int32
	for _, a := range w.tries {
		attempts += a
	}
	tb.Logf("mean over the %d Builds: %d/%d/%d ms; %d attempts in all", len(f.builds), ms(sum[0]/n), ms(sum[1]/n), ms(sum[2]/n), attempts)

	if !testing.Verbose() { // a benchmark's log is cut at 10 lines without -v
		return
	}
	names := slices.Collect(maps.Keys(byName))
	slices.SortFunc(names, func(a, b string) int {
		return at(byName[a], farmv1.BuildSucceeded).Compare(at(byName[b], farmv1.BuildSucceeded))
	})
	var sb strings.Builder
	sb.WriteString("ms after the submission started: created allocated running succeeded\n")
	for _, name := range names {
		rb := byName[name]
		fmt.Fprintf(&sb, "  %-18s %5d %5d %5d %5d  %s, %d attempt(s)\n", rb.attr, ms(at(rb, "").Sub(start)),
			ms(at(rb, farmv1.BuildAllocated).Sub(start)), ms(at(rb, farmv1.BuildRunning).Sub(start)),
			ms(at(rb, farmv1.BuildSucceeded).Sub(start)), w.agent[name], w.tries[name])
	}
	tb.Log(sb.String())
}
