package planner

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// DistroConfig shapes a synthetic distribution for benchmarks. The same config always yields
// the same distribution.
type DistroConfig struct {
	Seed     uint64
	Builds   int // pending builds
	Agents   int
	Slots    int     // per agent
	MaxDepth int     // longest dependency chain; default 150
	Hubs     int     // per system: toolchain-like inputs with thousands of dependents; default 20
	Avail    float64 // share of derivations already available (no build); default 0.05
}

// Distro is a generated model: builds in informer (shuffled) order, available derivations and
// agents.
type Distro struct {
	Builds    []Build
	Available []string
	Agents    []Agent
}

// SyntheticDistro generates a distribution-shaped derivation graph:
//   - three systems (x86_64-linux 60 %, aarch64-linux 25 %, i686-linux 15 %), one graph each;
//   - per system, Avail of the derivations are already available roots (bootstrap binaries,
//     substitutes) and have no build;
//   - a bootstrap chain of Hubs builds that nearly everything depends on, skewed so the first
//     few have thousands of dependents;
//   - every other build has a chain parent among the previous 50 (deep chains, bounded by
//     MaxDepth), 1-3 hubs, 0-4 random earlier derivations and one available root; 10 % are
//     leaf-like and need only available roots;
//   - priorities are 0 except 2 % (1..100); 2 % need big-parallel, 0.5 % of x86_64 need kvm,
//     1 % are deferred by an hour.
//
// Agents: 55 % x86_64+i686 (20 % of them kvm, 30 % big-parallel), 30 % aarch64 (30 %
// big-parallel), 15 % i686 only.
func SyntheticDistro(cfg DistroConfig) Distro {
	if cfg.MaxDepth == 0 {
		cfg.MaxDepth = 150
	}
	if cfg.Hubs == 0 {
		cfg.Hubs = 20
	}
	if cfg.Avail == 0 {
		cfg.Avail = 0.05
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15))
	var d Distro
	systems := []struct {
		name  string
		share float64
	}{{"x86_64-linux", 0.60}, {"aarch64-linux", 0.25}, {"i686-linux", 0.15}}
	serial := 0
	for si, sys := range systems {
		nb := int(float64(cfg.Builds) * sys.share)
		if si == len(systems)-1 {
			nb = cfg.Builds - len(d.Builds)
		}
		navail := max(1, int(float64(nb)*cfg.Avail/(1-cfg.Avail)))
		total := navail + nb
		names := make([]string, total)
		level := make([]int, total)
		for k := range names {
			names[k] = fmt.Sprintf("/gnu/store/%016x%016x-pkg-%d-%d.drv", rng.Uint64(), rng.Uint64(), si, k)
		}
		for k := range navail {
			d.Available = append(d.Available, names[k])
		}
		hubs := min(cfg.Hubs, nb)
		root := func() int { return rng.IntN(navail) }
		for k := navail; k < total; k++ {
			var in []int
			pick := func(c int) {
				if level[c] >= cfg.MaxDepth-1 { // keep chains bounded: fall back to a hub
					c = navail + rng.IntN(hubs)
				}
				in = append(in, c)
			}
			switch {
			case k < navail+hubs: // bootstrap chain
				if k > navail {
					pick(k - 1)
				}
				in = append(in, root(), root())
			case rng.IntN(10) == 0: // leaf-like: only available roots
				for range 1 + rng.IntN(3) {
					in = append(in, root())
				}
			default:
				lo := max(navail+hubs, k-50)
				if k > lo {
					pick(lo + rng.IntN(k-lo))
				}
				for range 1 + rng.IntN(3) {
					pick(navail + rng.IntN(1+rng.IntN(hubs))) // skewed towards the first hubs
				}
				for range rng.IntN(5) {
					pick(navail + rng.IntN(k-navail))
				}
				in = append(in, root())
			}
			b := Build{
				Key:        BuildKey(fmt.Sprintf("guix/b-%s-%06d", sys.name[:4], k)),
				UID:        fmt.Sprintf("%08x-%04x", rng.Uint32(), serial),
				Derivation: names[k],
				System:     sys.name,
				Created:    time.Unix(1700000000, 0).Add(time.Duration(serial) * time.Millisecond),
			}
			serial++
			for _, c := range in {
				level[k] = max(level[k], level[c]+1)
				b.Inputs = append(b.Inputs, names[c])
			}
			if rng.IntN(50) == 0 {
				b.Priority = int32(1 + rng.IntN(100))
			}
			switch r := rng.IntN(200); {
			case r < 4:
				b.Requirements = []string{"big-parallel"}
			case r < 5 && sys.name == "x86_64-linux":
				b.Requirements = []string{"kvm"}
			}
			if rng.IntN(100) == 0 {
				b.NotBefore = benchNow.Add(time.Hour)
			}
			d.Builds = append(d.Builds, b)
		}
	}
	rng.Shuffle(len(d.Builds), func(i, j int) { d.Builds[i], d.Builds[j] = d.Builds[j], d.Builds[i] })
	for i := range cfg.Agents {
		a := Agent{Name: fmt.Sprintf("agent-%04d", i), Slots: cfg.Slots}
		switch r := rng.IntN(100); {
		case r < 55:
			a.Pool, a.Systems = "x86", []string{"x86_64-linux", "i686-linux"}
			if rng.IntN(5) == 0 {
				a.Features = append(a.Features, "kvm")
			}
			if rng.IntN(10) < 3 {
				a.Features = append(a.Features, "big-parallel")
			}
		case r < 85:
			a.Pool, a.Systems = "arm", []string{"aarch64-linux"}
			if rng.IntN(10) < 3 {
				a.Features = append(a.Features, "big-parallel")
			}
		default:
			a.Pool, a.Systems = "i686", []string{"i686-linux"}
		}
		d.Agents = append(d.Agents, a)
	}
	return d
}

var benchNow = time.Unix(1700100000, 0)

// Load feeds a distribution into a planner, as the controller's informers would, with the
// available derivations known to its Lookup, as the availability owner knows them once warm
// (every other derivation of the distribution has a Build).
func (d Distro) Load(p *Planner) {
	for _, a := range d.Agents {
		p.UpsertAgent(a)
	}
	avail := make(map[string]bool, len(d.Available))
	for _, drv := range d.Available {
		avail[drv] = true
	}
	p.lookupFn = func(drv string) (bool, bool) { return avail[drv], true }
	for _, b := range d.Builds {
		p.UpsertBuild(b)
	}
}

// cpuTime is the process's CPU time: on a machine shared with other jobs it shows the
// planner's own cost where wall time also counts waiting for a core.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func liveHeapMiB() float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapAlloc) / (1 << 20)
}

var strategies = []Strategy{Basic, DerivationOrdered}

// benchOptions is the configuration the controller is meant to use: the size hint from the
// initial list of Builds, and wait reasons of new Builds read with CurrentWait.
func benchOptions(s Strategy, builds int) Options {
	return Options{Strategy: s, ExpectedBuilds: builds, SkipInitialWaits: true}
}

// benchPlan: each op builds the model from scratch and runs one full Plan. Metrics: model-ms
// and plan-ms split the op; heap-MiB is the live heap with the model loaded (including the
// generator's input, which shares its strings with the model), model-MiB the heap the
// model adds on top of that input.
func benchPlan(b *testing.B, builds int) {
	d := SyntheticDistro(DistroConfig{Seed: 1, Builds: builds, Agents: 1000, Slots: 2})
	for _, s := range strategies {
		b.Run(string(s), func(b *testing.B) {
			base := liveHeapMiB()
			p := New(benchOptions(s, len(d.Builds)))
			d.Load(p)
			heap := liveHeapMiB()
			runtime.KeepAlive(p)
			p = nil
			b.ReportAllocs()
			var model, plan time.Duration
			n := 0
			cpu0 := cpuTime()
			for b.Loop() {
				start := time.Now()
				p := New(benchOptions(s, len(d.Builds)))
				d.Load(p)
				mid := time.Now()
				out := p.Plan(benchNow)
				model += mid.Sub(start)
				plan += time.Since(mid)
				n++
				if len(out.Allocations) == 0 {
					b.Fatal("empty plan")
				}
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(n), "cpu-ms/op")
			b.ReportMetric(heap, "heap-MiB")
			b.ReportMetric(heap-base, "model-MiB")
			b.ReportMetric(float64(model.Milliseconds())/float64(n), "model-ms")
			b.ReportMetric(float64(plan.Microseconds())/1000/float64(n), "plan-ms")
		})
	}
}

func BenchmarkPlan1k(b *testing.B)   { benchPlan(b, 1_000) }
func BenchmarkPlan10k(b *testing.B)  { benchPlan(b, 10_000) }
func BenchmarkPlan100k(b *testing.B) { benchPlan(b, 100_000) }

// BenchmarkReplanAfterFinish100k: the model is built once; each op is one running build
// finishing (RemoveBuild, SetAvailable, its agent's Running--), a Plan, and the agent
// claiming the best build of its new horizon (UpsertBuild Running, Running++), so the farm
// stays in a steady state. Metric changes/op: allocation changes per Plan.
func BenchmarkReplanAfterFinish100k(b *testing.B) {
	d := SyntheticDistro(DistroConfig{Seed: 1, Builds: 100_000, Agents: 1000, Slots: 2})
	for _, s := range strategies {
		b.Run(string(s), func(b *testing.B) {
			p := New(benchOptions(s, len(d.Builds)))
			d.Load(p)
			builds := make(map[BuildKey]Build, len(d.Builds))
			for _, bl := range d.Builds {
				builds[bl.Key] = bl
			}
			agents := make(map[string]*Agent, len(d.Agents))
			for i := range d.Agents {
				a := d.Agents[i]
				agents[a.Name] = &a
			}
			type run struct {
				key   BuildKey
				agent string
			}
			var running []run
			claim := func(plan Plan, name string) {
				a := agents[name]
				if h := plan.Horizons[name]; len(h) > 0 && a.Running < a.Slots {
					bl := builds[h[0]]
					bl.Running, bl.Agent = true, name
					p.UpsertBuild(bl)
					a.Running++
					p.UpsertAgent(*a)
					running = append(running, run{h[0], name})
				}
			}
			plan := p.Plan(benchNow)
			for range 2 { // every agent fills its slots
				for _, a := range d.Agents {
					claim(plan, a.Name)
				}
				plan = p.Plan(benchNow)
			}
			if len(running) == 0 {
				b.Fatal("nothing running")
			}
			b.ReportAllocs()
			changes := 0
			cpu0 := cpuTime()
			for b.Loop() {
				if len(running) == 0 {
					b.Fatal("ran out of running builds")
				}
				r := running[0]
				running = running[1:]
				p.RemoveBuild(r.key)
				p.SetAvailable(builds[r.key].Derivation, true)
				a := agents[r.agent]
				a.Running--
				p.UpsertAgent(*a)
				plan := p.Plan(benchNow)
				changes += len(plan.Allocations)
				claim(plan, r.agent)
			}
			b.ReportMetric(float64(changes)/float64(b.N), "changes/op")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
		})
	}
}
