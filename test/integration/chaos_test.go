package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/compress"
	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/narinfo"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/test/farm"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// The chaos test's knobs: flags (go test ./test/integration -run TestChaos -args -chaos.duration=10m)
// or, for make, environment variables. The defaults are the bounded form `make test` runs.
var (
	chaosDuration = flag.Duration("chaos.duration", envDuration("GUIXFARM_CHAOS_DURATION", 0),
		"inject faults this long, submitting a new DAG whenever one is done (0: one DAG, faults until it settles; $GUIXFARM_CHAOS_DURATION)")
	chaosSeed   = flag.Uint64("chaos.seed", envUint("GUIXFARM_CHAOS_SEED", 1), "seed of the DAG and the fault script ($GUIXFARM_CHAOS_SEED)")
	chaosDrvs   = flag.Int("chaos.drvs", envInt("GUIXFARM_CHAOS_DRVS", 200), "derivations per DAG, besides the failing ones ($GUIXFARM_CHAOS_DRVS)")
	chaosFaults = flag.Bool("chaos.faults", os.Getenv("GUIXFARM_CHAOS_FAULTS") != "0", "inject faults (GUIXFARM_CHAOS_FAULTS=0: none, for a baseline)")
	// chaosArtifacts, when set, receives the agents', controller's and daemons' logs and the
	// build records, kept after the test.
	chaosArtifacts = flag.String("chaos.artifacts", os.Getenv("GUIXFARM_CHAOS_ARTIFACTS"), "directory to keep logs and records in ($GUIXFARM_CHAOS_ARTIFACTS)")
)

func envDuration(k string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(k)); err == nil {
		return d
	}
	return def
}

func envUint(k string, def uint64) uint64 {
	if v, err := strconv.ParseUint(os.Getenv(k), 10, 64); err == nil {
		return v
	}
	return def
}

func envInt(k string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil {
		return v
	}
	return def
}

const (
	chaosAgents = 4
	chaosSlots  = 3
	chaosLease  = 4 * time.Second
	// chaosGrace is how long after a fault ends an agent may still run a builder of an attempt
	// the farm gave to another agent meanwhile (it must notice and stop it).
	chaosGrace = 10 * time.Second
	// chaosFailing derivations fail by design (builder exits 1), each with two dependents in a chain.
	chaosFailing = 3
	// chaosTick is the sleep between two records of a slow builder.
	chaosTick = 200 * time.Millisecond
	// chaosBoundedFaults caps the fault phase of the bounded form.
	chaosBoundedFaults = 60 * time.Second
	chaosSettle        = 2 * time.Minute
)

// chaosDAGNix is a DAG of busybox derivations. Each builder records in /chaos/runs (a directory
// of the agent's own, bound into its daemon's sandbox by extra-sandbox-paths) when it starts,
// every tick while it sleeps and when it ends, with the kernel's uptime: the daemons' own account
// of which derivation ran where and when. Builders sleep only where /chaos/slow exists (the
// agents' daemons), so the reference build on another daemon is quick; what they write to $out
// does not depend on it, except for the random ones, whose output holds 16 random bytes: each
// run's output differs, so their narinfo tells which run published it.
const chaosDAGNix = `{ bb, nonce, nodes }:
let
  busybox = builtins.storePath bb;
  mk = name: ticks: deps: fail: random: derivation {
    inherit name nonce;
    system = builtins.currentSystem;
    builder = "${busybox}/bin/busybox";
    args = [ "sh" "-c" (''
      B=${busybox}/bin/busybox
      rec() { if [ -d /chaos ]; then read up idle < /proc/uptime; echo "$1 ${name} $up" >> /chaos/runs; fi; }
      rec start
      if [ -e /chaos/slow ]; then
        i=0
        while [ $i -lt ${toString ticks} ]; do $B sleep 0.2; rec tick; i=$((i+1)); done
      fi
    '' + (if fail then ''
      echo "chaos: ${name} fails by design"
      rec end
      exit 1
    '' else ''
      $B mkdir $out
      { echo ${name}; for d in ${builtins.concatStringsSep " " (map toString deps)}; do echo $d; $B head -n 1 $d/v; done; } > $out/v
      ${if random then "$B head -c 16 /dev/urandom > $out/random" else ""}
      rec end
    '')) ];
  };
  drvs = builtins.foldl' (acc: n: acc // { ${n.attr} = mk n.name n.ticks (map (d: acc.${d}) n.deps) n.fail n.random; }) { } nodes;
in drvs
`

// chaosNode is one derivation of a generated DAG.
type chaosNode struct {
	Attr  string   `json:"attr"`
	Name  string   `json:"name"`
	Ticks int      `json:"ticks"`
	Deps  []string `json:"deps"`
	Fail  bool     `json:"fail"`
	// Random: the output holds random bytes (its NarHash is each run's own).
	Random bool `json:"random"`
	// blocked: a dependent (transitively) of a failing derivation: it waits, never fails.
	blocked bool
	// direct: blocked and a failing derivation is its input (its wait reason is InputFailed).
	direct bool
}

// chaosDAG generates n derivations in layers (each depending on 1–3 of the layer below and
// sometimes one further down), 26% of them sleeping 0.2–1 s on the agents and 4% 5–8 s, one in 12 with a
// random output, and chaosFailing
// failing ones, each with a chain of two dependents (the first also depending on a healthy one).
func chaosDAG(rng *rand.Rand, round, n int) []chaosNode {
	width := max(1, n/7)
	var nodes []chaosNode
	attr := func(i int) string { return fmt.Sprintf("n%03d", i) }
	for i := range n {
		nd := chaosNode{Attr: attr(i), Name: fmt.Sprintf("chaos-%d-%03d", round, i)}
		switch x := rng.IntN(100); {
		case x < 4: // long enough to outlast a pause's Lease term and the takeover
			nd.Ticks = 25 + rng.IntN(16)
		case x < 30:
			nd.Ticks = 1 + rng.IntN(5)
		}
		nd.Random = rng.IntN(12) == 0
		if layer := i / width; layer > 0 {
			lo, hi := (layer-1)*width, layer*width
			for _, j := range rng.Perm(hi - lo)[:1+rng.IntN(min(3, hi-lo))] {
				nd.Deps = append(nd.Deps, attr(lo+j))
			}
			if layer > 1 && rng.IntN(5) == 0 {
				nd.Deps = append(nd.Deps, attr(rng.IntN(lo)))
			}
			sort.Strings(nd.Deps)
		}
		if nd.Deps == nil {
			nd.Deps = []string{} // a JSON list for Nix, not null
		}
		nodes = append(nodes, nd)
	}
	for k := range chaosFailing {
		f := fmt.Sprintf("fail%d", k)
		nodes = append(nodes,
			chaosNode{Attr: f, Name: fmt.Sprintf("chaos-%d-fail-%d", round, k), Ticks: 1 + rng.IntN(3), Fail: true, Deps: []string{}},
			chaosNode{Attr: f + "dep1", Name: fmt.Sprintf("chaos-%d-fail-%d-dep-1", round, k), Deps: []string{f, attr(rng.IntN(n))},
				blocked: true, direct: true},
			chaosNode{Attr: f + "dep2", Name: fmt.Sprintf("chaos-%d-fail-%d-dep-2", round, k), Deps: []string{f + "dep1"}, blocked: true})
	}
	return nodes
}

// chaosFault is one fault injected: its kind, the agent it hit (if any), and when.
type chaosFault struct {
	Kind       string
	Agent      string
	Start, End time.Time
}

const (
	faultKill       = "agent-sigkill"
	faultPause      = "agent-sigstop"
	faultPartition  = "agent-partition"
	faultController = "controller-restart"
	faultAPIServer  = "apiserver-restart"
	faultMinIO      = "minio-restart"
)

var chaosFaultKinds = []string{faultKill, faultPause, faultPartition, faultController, faultAPIServer, faultMinIO}

// chaosAgent is one agent: its daemon, the proxy in front of the apiserver its kubeconfig names,
// the directory its builders record into, and its processes (a restart adds one).
type chaosAgent struct {
	name    string
	kc      string
	proxy   *testbed.Proxy
	daemon  *testbed.NixDaemon
	records string
	spec    farm.DaemonAgentSpec

	mu    sync.Mutex
	procs []*farm.AgentProcess // every incarnation, the current one last
	// busy: a fault owns the process (kill and restart): the supervisor leaves it alone.
	busy bool
	// exits are the times the agent exited on its own, with the fault that preceded it.
	exits []chaosExit
}

type chaosExit struct {
	At    time.Time
	Code  int
	After string // the last fault that began before the exit and ended at most chaosGrace before it
}

func (a *chaosAgent) proc() *farm.AgentProcess {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.procs[len(a.procs)-1]
}

// chaos is one chaos run: the farm, its agents, the DAGs submitted and the faults injected.
type chaos struct {
	f      *rbFarm
	agents []*chaosAgent
	rng    *rand.Rand
	boot   time.Time // the kernel's boot, to read the builders' uptime records

	// faultMu is held by each fault and by a submission (which needs the apiserver and MinIO).
	faultMu sync.Mutex
	mu      sync.Mutex
	faults  []chaosFault
	nodes   map[string]*chaosNode // by attr (round-qualified: r<round>.<attr>)
	rounds  []chaosRound

	// The reference build (startReference).
	ref      *testbed.NixDaemon
	refDone  chan error
	refStart time.Time
}

// chaosRound is one DAG: the expression instantiated and the keys of its Builds, in order.
type chaosRound struct {
	expr  string
	attrs []string // the nodes' attrs in the expression
	keys  []string // their keys in c.nodes and f.builds
}

// TestChaos: 200+ real derivations (busybox builders, a DAG 7 layers deep, three failing by
// design, each with two dependents) through the farm (the controller, 4 agents with 2 slots each
// building through their own sandboxed nix-daemons, MinIO), while a seeded script injects a fault
// every 2–5 s: an agent SIGKILLed and restarted under its name, an agent SIGSTOPped past its Lease
// term then SIGCONTed, an agent partitioned from the apiserver (some past its term), the
// controller stopped and started, the apiserver killed and started, MinIO stopped and started.
// Afterwards: every Build Succeeded but the failing ones, which Failed after their own attempts
// only, and their dependents wait (InputFailed/InputsPending), never Failed; nothing is left
// Running or Pending without a reason; no derivation ran on two daemons at once outside the
// window of a fault that froze or cut off one of them (plus chaosGrace), and no attempt records
// overlap; no agent published or reported an attempt it had lost; every narinfo's nar is in the
// bucket with the FileHash and NarHash the narinfo says, and every NarHash is a reference build's
// (the same derivations realised by plain nix-store on another daemon). It prints the figures.
// GUIXFARM_CHAOS_DURATION runs it longer (see the flags above and docs/chaos.md).
func TestChaos(t *testing.T) {
	wall := time.Now()
	seed := *chaosSeed
	t.Logf("chaos: seed %d, %d derivations per DAG, fault phase %v (GUIXFARM_CHAOS_SEED, GUIXFARM_CHAOS_DRVS, GUIXFARM_CHAOS_DURATION)",
		seed, *chaosDrvs, *chaosDuration)
	c := &chaos{rng: rand.New(rand.NewPCG(seed, 0xc4a05)), nodes: map[string]*chaosNode{}, boot: bootTime(t)}

	// Each agent's record directory, bound into its daemon's sandbox; "slow" makes builders sleep.
	names := make([]string, chaosAgents)
	records := map[string]string{}
	for i := range names {
		names[i] = fmt.Sprintf("chaos-%c", 'a'+i)
		dir := t.TempDir()
		for _, f := range []string{"slow", "runs"} {
			if err := os.WriteFile(filepath.Join(dir, f), nil, 0o666); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		records[names[i]] = dir
	}
	c.f = startRealFarmWith(t, rbOptions{Agents: names, ControllerErrorsOK: true, ControllerVerbosity: 1,
		DaemonConf: func(a string) string { return "extra-sandbox-paths = /chaos=" + records[a] + "\n" }})
	f := c.f

	// The first DAG is submitted before any agent runs: the submission publishes busybox, which
	// each agent's daemon substitutes once before its agent starts (see startAgents).
	attrs := c.addRound(t)
	c.startReference(t)
	for _, n := range names {
		f.daemons[n].MustRun(t, "nix-store", "--realise", f.bb)
	}
	for _, n := range names {
		kc, proxy := env.PartitionableKubeconfig(t)
		spec := f.agentSpec(n, f.daemons[n].Socket)
		spec.LeaseDuration = chaosLease
		spec.Slots = chaosSlots
		spec.Args = []string{"--zap-time-encoding=rfc3339nano"}
		a := &chaosAgent{name: n, kc: kc, proxy: proxy, daemon: f.daemons[n], records: records[n], spec: spec}
		a.procs = []*farm.AgentProcess{env.StartDaemonAgent(t, kc, f.ns, spec)}
		c.agents = append(c.agents, a)
	}
	// Run before the agents' own cleanups (which stop them and remove their logs): the figures,
	// whatever happened, and the artifacts.
	var report *chaosReport
	t.Cleanup(func() {
		if report != nil {
			report.wall = time.Since(wall)
			report.print(t)
		}
		c.keepArtifacts(t)
	})
	start := time.Now()
	t.Logf("farm up, %d Builds submitted after %s", len(attrs), start.Sub(wall).Round(100*time.Millisecond))

	// The fault script and the agents' supervisor (a kubelet restarting containers that exit).
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.supervise(t, ctx) }()
	faultsDone := make(chan struct{})
	go func() { defer wg.Done(); defer close(faultsDone); c.inject(t, ctx) }()
	stopAll := sync.OnceFunc(func() { stop(); wg.Wait(); c.restore(t) })
	t.Cleanup(stopAll)

	// Until the fault phase ends: the bounded form ends it once the DAG has settled (or after
	// chaosBoundedFaults); the long form runs for its duration, submitting a new DAG whenever the
	// last one has settled.
	phase := chaosBoundedFaults
	if *chaosDuration > 0 {
		phase = *chaosDuration
	}
	deadline := start.Add(phase)
	for time.Now().Before(deadline) {
		if settled, _ := c.settled(t); settled {
			if *chaosDuration == 0 {
				break
			}
			attrs = append(attrs, c.addRound(t)...)
			continue
		}
		select {
		case <-faultsDone:
			t.Fatal("the fault script stopped early")
		case <-time.After(time.Second):
		}
	}
	faultEnd := time.Now()
	stopAll()
	t.Logf("fault phase over after %s; waiting for the farm to settle", faultEnd.Sub(start).Round(100*time.Millisecond))
	var why string
	settleBy := time.Now().Add(chaosSettle)
	for {
		var ok bool
		if ok, why = c.settled(t); ok || time.Now().After(settleBy) {
			break
		}
		time.Sleep(time.Second)
	}
	settled := time.Now()
	if why != "" {
		c.diagnose(t)
	}
	report = c.check(t, why)
	report.farm = settled.Sub(start)
}

// diagnose logs what the controller's planner says of the Builds that wait without a failed input,
// for a farm that did not settle.
func (c *chaos) diagnose(t *testing.T) {
	fm := c.f.ctrl.Farm()
	if fm == nil {
		return
	}
	p := fm.Loop.Planner()
	t.Logf("planner: %+v", p.Stats())
	byName := map[string]*farmv1.Build{}
	for _, b := range listBuilds(t, c.f.ns) {
		byName[b.Name] = &b
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	failedIn := c.failedInputs(byName)
	for key, n := range c.nodes {
		rb := c.f.builds[key]
		b := byName[rb.name]
		if b == nil || b.Status.Phase.Finished() || failedIn[key] != "" {
			continue
		}
		k := planner.BuildKey(c.f.ns + "/" + rb.name)
		w, inPlanner := p.CurrentWait(k)
		in, hasIntent := fm.Loop.Intent(k)
		rank, _ := p.Rank(k)
		round, _, _ := strings.Cut(key, ".")
		var inputs []string
		for _, d := range n.Deps {
			ib := byName[c.f.builds[round+"."+d].name]
			inputs = append(inputs, fmt.Sprintf("%s %s available=%t", c.f.builds[round+"."+d].name, ib.Status.Phase,
				p.Available(c.f.builds[round+"."+d].drv)))
		}
		t.Logf("unsettled %s: %s; planner knows it %t, wait %+v, rank %+v, intent %t %+v; conditions %+v; inputs: %s",
			rb.name, rbState(b), inPlanner, w, rank, hasIntent, in, b.Status.Conditions, strings.Join(inputs, "; "))
	}
}

// bootTime is when the kernel booted, by the wall clock: the builders record /proc/uptime.
func bootTime(t testing.TB) time.Time {
	data, err := os.ReadFile("/proc/uptime")
	now := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	up, err := strconv.ParseFloat(strings.Fields(string(data))[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	return now.Add(-time.Duration(up * float64(time.Second)))
}

// addRound generates, instantiates and submits a new DAG, and returns its Build attrs.
func (c *chaos) addRound(t *testing.T) []string {
	t.Helper()
	f := c.f
	start := time.Now()
	c.mu.Lock()
	round := len(c.rounds)
	c.rounds = append(c.rounds, chaosRound{})
	nodes := chaosDAG(c.rng, round, *chaosDrvs)
	c.mu.Unlock()
	nodesJSON, err := json.Marshal(nodes)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(f.submit.Root, fmt.Sprintf("chaos-%d.nix", round))
	if err := os.WriteFile(file, []byte(chaosDAGNix), 0o644); err != nil {
		t.Fatal(err)
	}
	jsonFile := filepath.Join(f.submit.Root, fmt.Sprintf("chaos-%d.json", round))
	if err := os.WriteFile(jsonFile, nodesJSON, 0o644); err != nil {
		t.Fatal(err)
	}
	// nodes is read by Nix from the JSON (a list in dependency order).
	expr := fmt.Sprintf(`import %s { bb = %s; nonce = %s; nodes = builtins.fromJSON (builtins.readFile %s); }`,
		file, testbed.NixString(f.bb), testbed.NixString(fmt.Sprintf("%s-%d", f.nonce, round)), jsonFile)
	exprFile := filepath.Join(f.submit.Root, fmt.Sprintf("chaos-%d-top.nix", round))
	if err := os.WriteFile(exprFile, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"nix-instantiate", exprFile}
	for _, n := range nodes {
		args = append(args, "-A", n.Attr)
	}
	out := strings.Fields(f.submit.MustRun(t, args...))
	c.faultMu.Lock() // no fault while submitting
	defer c.faultMu.Unlock()
	if len(out) != len(nodes) {
		t.Fatalf("nix-instantiate gave %d paths for %d derivations", len(out), len(nodes))
	}
	var attrs []string
	c.mu.Lock()
	for i := range nodes {
		key := fmt.Sprintf("r%d.%s", round, nodes[i].Attr)
		f.addBuild(t, key, out[i])
		c.nodes[key] = &nodes[i]
		attrs = append(attrs, key)
		c.rounds[round].attrs = append(c.rounds[round].attrs, nodes[i].Attr)
	}
	c.rounds[round].expr, c.rounds[round].keys = exprFile, attrs
	c.mu.Unlock()
	t0 := time.Now()
	f.submitBuilds(t, nil, attrs...)
	t1 := time.Now()
	// The retry policies the plugin cannot set, 8 at a time: a 1 s backoff rather than the
	// default 10 s; a failing derivation fails twice, then its Build Failed.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, a := range attrs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if c.nodes[a].Fail {
				f.setRetry(t, a, 2, 1)
			} else {
				f.setRetry(t, a, 3, 1)
			}
		}()
	}
	wg.Wait()
	t.Logf("DAG %d: %d derivations instantiated in %s, submitted in %s, retry policies set in %s", round, len(nodes),
		t0.Sub(start).Round(100*time.Millisecond), t1.Sub(t0).Round(100*time.Millisecond), time.Since(t1).Round(100*time.Millisecond))
	return attrs
}

// settled says whether every Build has reached where it must end (Succeeded; Failed for the
// failing derivations; Pending with a reason for their dependents), or what it waits for.
// During an outage it says no.
func (c *chaos) settled(t testing.TB) (bool, string) {
	var l farmv1.BuildList
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := env.Client.List(ctx, &l, client.InNamespace(c.f.ns)); err != nil {
		return false, "listing Builds: " + err.Error()
	}
	byName := map[string]*farmv1.Build{}
	for i := range l.Items {
		byName[l.Items[i].Name] = &l.Items[i]
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	failedIn := c.failedInputs(byName)
	var waiting []string
	for key, n := range c.nodes {
		rb := c.f.builds[key]
		b := byName[rb.name]
		if b == nil {
			waiting = append(waiting, rb.name+" missing")
			continue
		}
		// A finished Build is settled, even one that ended otherwise than it should: check reports
		// it. A Build with a failed input (by design, or not: check reports that one) is settled
		// once it waits saying why.
		if !b.Status.Phase.Finished() && !(failedIn[key] != "" && blockedWaiting(b, n.direct || failedIn[key] == "direct")) {
			waiting = append(waiting, rb.name+" "+rbState(b))
		}
	}
	sort.Strings(waiting)
	if len(waiting) > 0 {
		return false, fmt.Sprintf("%d Builds: %s", len(waiting), strings.Join(waiting[:min(len(waiting), 8)], ", "))
	}
	return true, ""
}

// failedInputs says, per node key, whether one of its inputs (transitively) has a Failed Build:
// "direct" when an input itself Failed, "indirect" when only further inputs did, "" when none.
// Called with c.mu held.
func (c *chaos) failedInputs(byName map[string]*farmv1.Build) map[string]string {
	memo := map[string]string{}
	var visit func(key string) string
	visit = func(key string) string {
		if v, ok := memo[key]; ok {
			return v
		}
		memo[key] = ""
		round, _, _ := strings.Cut(key, ".")
		v := ""
		for _, d := range c.nodes[key].Deps {
			dk := round + "." + d
			if b := byName[c.f.builds[dk].name]; b != nil && b.Status.Phase == farmv1.BuildFailed {
				v = "direct"
				break
			}
			if visit(dk) != "" {
				v = "indirect"
			}
		}
		memo[key] = v
		return v
	}
	for key := range c.nodes {
		visit(key)
	}
	return memo
}

// blockedWaiting: a dependent of a failed Build waits Pending, saying why: InputFailed when the
// failed Build is its direct input's.
func blockedWaiting(b *farmv1.Build, direct bool) bool {
	if b.Status.Phase != farmv1.BuildPending && b.Status.Phase != "" {
		return false
	}
	cond := meta.FindStatusCondition(b.Status.Conditions, farmv1.BuildConditionInputsPending)
	if cond == nil || cond.Status != "True" {
		return false
	}
	if direct {
		return cond.Reason == "InputFailed"
	}
	return cond.Reason == "InputFailed" || cond.Reason == "InputsPending"
}

// inject runs the fault script until ctx ends: the kinds in rounds, each round every kind once in
// a seeded order; between two faults a pause of 1.5–4 s. Faults do not overlap.
func (c *chaos) inject(t *testing.T, ctx context.Context) {
	if !*chaosFaults {
		<-ctx.Done()
		return
	}
	var order []string
	for {
		if !sleepCtx(ctx, 1500*time.Millisecond+time.Duration(c.rng.IntN(2500))*time.Millisecond) {
			return
		}
		if len(order) == 0 {
			order = slices.Clone(chaosFaultKinds)
			c.rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		}
		kind := order[0]
		order = order[1:]
		c.faultMu.Lock()
		c.fault(t, ctx, kind)
		c.faultMu.Unlock()
	}
}

// fault injects one fault of kind and records it.
func (c *chaos) fault(t *testing.T, ctx context.Context, kind string) {
	f := c.f
	fl := chaosFault{Kind: kind, Start: time.Now()}
	// A random duration in [lo, hi) seconds.
	dur := func(lo, hi float64) time.Duration {
		return time.Duration((lo + c.rng.Float64()*(hi-lo)) * float64(time.Second))
	}
	var a *chaosAgent
	if kind == faultKill || kind == faultPause || kind == faultPartition {
		a = c.agents[c.rng.IntN(len(c.agents))]
		fl.Agent = a.name
	}
	switch kind {
	case faultKill:
		d := dur(0.5, 3)
		a.mu.Lock()
		a.busy = true
		p := a.procs[len(a.procs)-1]
		a.mu.Unlock()
		p.Kill()
		sleepCtx(ctx, d)
		a.mu.Lock()
		a.procs = append(a.procs, p.Restart(t))
		a.busy = false
		a.mu.Unlock()
	case faultPause:
		p := a.proc()
		p.Pause()
		sleepCtx(ctx, chaosLease+dur(1, 4)) // past its term
		p.Resume()
	case faultPartition:
		d := dur(1, chaosLease.Seconds()/2) // within its term
		if c.rng.IntN(2) == 0 {
			d = chaosLease + dur(1, 4) // past it
		}
		a.proxy.Partition()
		sleepCtx(ctx, d)
		a.proxy.Heal()
	case faultController:
		f.ctrl.Stop()
		sleepCtx(ctx, dur(0.5, 3))
		f.ctrl.Start()
	case faultAPIServer:
		// Half of the outages outlast the agents' Lease term (which must not stop them).
		d := dur(1, chaosLease.Seconds()/2)
		if c.rng.IntN(2) == 0 {
			d = chaosLease + dur(0, 2)
		}
		env.StopAPIServer(t)
		sleepCtx(ctx, d)
		env.StartAPIServer(t) // about 3 s more until it serves

	case faultMinIO:
		f.minio.Stop()
		sleepCtx(ctx, dur(2, 5))
		f.minio.Start(t)
	}
	fl.End = time.Now()
	c.mu.Lock()
	c.faults = append(c.faults, fl)
	c.mu.Unlock()
	t.Logf("fault %-18s %-8s %s–%s (%s)", kind, fl.Agent, fl.Start.Format("15:04:05.000"), fl.End.Format("15:04:05.000"),
		fl.End.Sub(fl.Start).Round(10*time.Millisecond))
}

// supervise restarts agents that exit on their own, as a kubelet would (after 1 s), recording it.
func (c *chaos) supervise(t *testing.T, ctx context.Context) {
	for sleepCtx(ctx, 500*time.Millisecond) {
		for _, a := range c.agents {
			a.mu.Lock()
			p := a.procs[len(a.procs)-1]
			if a.busy || !p.Exited() {
				a.mu.Unlock()
				continue
			}
			ex := chaosExit{At: time.Now(), Code: p.ExitCode(), After: c.lastFaultBefore(time.Now())}
			a.exits = append(a.exits, ex)
			a.mu.Unlock()
			t.Logf("agent %s exited on its own (code %d; last fault: %s); restarting it", a.name, ex.Code, ex.After)
			sleepCtx(ctx, time.Second)
			a.mu.Lock()
			if !a.busy && a.procs[len(a.procs)-1] == p { // a kill fault may have restarted it meanwhile
				a.procs = append(a.procs, p.Restart(t))
			}
			a.mu.Unlock()
		}
	}
}

// lastFaultBefore names the fault that began last before at, if it ended at most chaosGrace
// before at (or is still going on).
func (c *chaos) lastFaultBefore(at time.Time) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.faults) - 1; i >= 0; i-- {
		fl := c.faults[i]
		if fl.Start.Before(at) && at.Sub(fl.End) <= chaosGrace {
			return strings.TrimSpace(fl.Kind + " " + fl.Agent)
		}
	}
	// The fault in progress is recorded once it ends.
	return "none"
}

// restore undoes whatever fault may be left (all are undone as they end; this is for a test
// that stops in the middle of one), and starts agents that exited.
func (c *chaos) restore(t *testing.T) {
	if env.APIServerDown() {
		env.StartAPIServer(t)
	}
	if c.f.minio.Stopped() {
		c.f.minio.Start(t)
	}
	c.f.ctrl.Start()
	for _, a := range c.agents {
		a.proxy.Heal()
		a.mu.Lock()
		p := a.procs[len(a.procs)-1]
		p.Resume()
		if p.Exited() {
			a.procs = append(a.procs, p.Restart(t))
		}
		a.mu.Unlock()
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// chaosRun is one builder run the daemons recorded: which agent's daemon ran which derivation
// from when to when; ended says the builder recorded its end (else it was killed, and To is its
// last record plus a tick).
type chaosRun struct {
	Agent, Name string
	From, To    time.Time
	Ended       bool
}

// runs reads the builders' records of every agent's daemon.
func (c *chaos) runs(t testing.TB) []chaosRun {
	var all []chaosRun
	for _, a := range c.agents {
		fh, err := os.Open(filepath.Join(a.records, "runs"))
		if err != nil {
			t.Fatal(err)
		}
		open := map[string]*chaosRun{}
		flush := func(name string) {
			if r := open[name]; r != nil {
				all = append(all, *r)
				delete(open, name)
			}
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) != 3 {
				continue
			}
			up, err := strconv.ParseFloat(fs[2], 64)
			if err != nil {
				continue
			}
			at := c.boot.Add(time.Duration(up * float64(time.Second)))
			kind, name := fs[0], fs[1]
			switch kind {
			case "start":
				flush(name)
				open[name] = &chaosRun{Agent: a.name, Name: name, From: at, To: at.Add(chaosTick)}
			case "tick", "end":
				r := open[name]
				if r == nil {
					r = &chaosRun{Agent: a.name, Name: name, From: at}
					open[name] = r
				}
				r.To = at.Add(chaosTick)
				if kind == "end" {
					r.To, r.Ended = at, true
					flush(name)
				}
			}
		}
		fh.Close()
		for name := range open {
			flush(name)
		}
	}
	return all
}

// excused says whether an overlap [from, to] of two runs on agents x and y lies within a fault
// that froze, cut off or killed one of them (plus chaosGrace to notice and stop).
func (c *chaos) excused(from, to time.Time, x, y string) (bool, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, fl := range c.faults {
		if fl.Agent != x && fl.Agent != y {
			continue
		}
		if !from.Before(fl.Start) && !to.After(fl.End.Add(chaosGrace)) {
			return true, fl.Kind + " " + fl.Agent
		}
	}
	return false, ""
}

// chaosReport holds the figures.
type chaosReport struct {
	faults                            map[string]int
	builds, succeeded, failedByDesign int
	waitingByDesign, blockedByFaults  int
	attempts, lostAttempts            int
	runs, doubleRuns, excusedRuns     int
	attemptOverlaps                   int
	zombiePublications, unreported    int
	userRetriesSpent                  int
	lost, badNarinfos, narinfos       int
	exits                             map[string]int
	wall, farm                        time.Duration
}

func (r *chaosReport) print(t testing.TB) {
	var kinds []string
	total := 0
	for _, k := range chaosFaultKinds {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, r.faults[k]))
		total += r.faults[k]
	}
	exits := []string{"none"}
	if len(r.exits) > 0 {
		exits = exits[:0]
		for k, n := range r.exits {
			exits = append(exits, fmt.Sprintf("%d after %s", n, k))
		}
		sort.Strings(exits)
	}
	t.Logf("chaos figures:\n"+
		"  faults injected: %d (%s)\n"+
		"  builds: %d (succeeded %d, failed by design %d, waiting on a failed input %d, waiting on a Build that failed though it should not have %d); attempts %d, lost to faults (status.lostAttempts) %d\n"+
		"  builder runs recorded by the daemons: %d; double runs: %d (overlaps inside a fault's window: %d); overlapping attempt records: %d\n"+
		"  narinfos published by agents holding no attempt of them: %d; successes never reported: %d; user retries spent by faults: %d\n"+
		"  lost: %d; narinfos %d, bad: %d\n"+
		"  agents exiting on their own: %s\n"+
		"  wall time %s (farm, submission to settled: %s)",
		total, strings.Join(kinds, ", "),
		r.builds, r.succeeded, r.failedByDesign, r.waitingByDesign, r.blockedByFaults, r.attempts, r.lostAttempts,
		r.runs, r.doubleRuns, r.excusedRuns, r.attemptOverlaps,
		r.zombiePublications, r.unreported, r.userRetriesSpent,
		r.lost, r.narinfos, r.badNarinfos,
		strings.Join(exits, ", "),
		r.wall.Round(100*time.Millisecond), r.farm.Round(100*time.Millisecond))
}

// check asserts what the chaos must not break and returns the figures.
func (c *chaos) check(t *testing.T, unsettled string) *chaosReport {
	f := c.f
	ctx := context.Background()
	r := &chaosReport{faults: map[string]int{}, exits: map[string]int{}}
	for _, fl := range c.faults {
		r.faults[fl.Kind]++
	}
	for _, k := range chaosFaultKinds {
		if r.faults[k] == 0 && *chaosFaults {
			t.Errorf("no %s fault was injected", k)
		}
	}
	if unsettled != "" {
		t.Errorf("the farm did not settle within %s after the faults: %s", chaosSettle, unsettled)
	}

	var keys []string
	for key := range c.nodes {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	// Builds.
	builds := map[string]*farmv1.Build{}
	for _, b := range listBuilds(t, f.ns) {
		builds[b.Name] = &b
	}
	refHash := c.reference(t, builds)
	r.builds = len(builds)
	byName := map[string]*farmv1.Build{}
	for name, b := range builds {
		byName[name] = b
	}
	c.mu.Lock()
	failedIn := c.failedInputs(byName)
	c.mu.Unlock()
	byDrvName := map[string]*farmv1.Build{} // by derivation name (what the builders record)
	for _, key := range keys {
		n, rb := c.nodes[key], f.builds[key]
		b := builds[rb.name]
		if b == nil {
			t.Errorf("Build %s (%s) is gone", rb.name, key)
			r.lost++
			continue
		}
		byDrvName[n.Name] = b
		r.attempts += int(b.Status.AttemptCount)
		r.lostAttempts += int(b.Status.LostAttempts)
		c.checkAttempts(t, b, r)
		switch {
		case n.Fail:
			cond := meta.FindStatusCondition(b.Status.Conditions, farmv1.BuildConditionSucceeded)
			if b.Status.Phase != farmv1.BuildFailed || cond == nil || cond.Reason != farmv1.ReasonRetriesExceeded {
				t.Errorf("failing %s: %s, condition %+v; want Failed, RetriesExceeded", b.Name, rbState(b), cond)
			} else {
				r.failedByDesign++
			}
			for _, a := range b.Status.Attempts {
				farms := a.Reason == farmv1.ReasonAgentLost || a.Reason == farmv1.ReasonAgentReleased ||
					a.Reason == farmv1.ReasonAgentUnhealthy || a.Reason == farmv1.ReasonMissingInputs
				if a.Result == farmv1.AttemptFailed && !farms && !strings.Contains(a.Message, "fails by design") {
					t.Errorf("failing %s: attempt on %s failed for another reason: %s %s", b.Name, a.Agent, a.Reason, a.Message)
				}
			}
			f.noNarInfo(t, key)
		case n.blocked:
			if b.Status.Phase == farmv1.BuildFailed || b.Status.Phase == farmv1.BuildSucceeded {
				t.Errorf("%s depends on a failing derivation and ended %s: %+v", b.Name, b.Status.Phase, b.Status)
			} else if !blockedWaiting(b, n.direct) {
				t.Errorf("%s depends on a failing derivation: %s with conditions %+v; want Pending, InputsPending=True (InputFailed for a direct dependent)",
					b.Name, rbState(b), b.Status.Conditions)
			} else {
				r.waitingByDesign++
			}
		case failedIn[key] != "" && !b.Status.Phase.Finished():
			// Waits on a Build that failed where it should not have (reported on its own).
			r.blockedByFaults++
			if !blockedWaiting(b, failedIn[key] == "direct") {
				t.Errorf("%s: %s with conditions %+v; it has a Failed input, want Pending, InputsPending=True", b.Name, rbState(b), b.Status.Conditions)
			}
		default:
			if b.Status.Phase != farmv1.BuildSucceeded {
				t.Errorf("%s: %s, attempts %s; want Succeeded", b.Name, rbState(b), attemptsString(b))
				if !b.Status.Phase.Finished() {
					r.lost++
				}
				continue
			}
			r.succeeded++
			for _, o := range b.Status.Outputs {
				if want := refHash[o.Path]; o.NarHash != want {
					t.Errorf("%s: status.outputs[%s].narHash %q, the reference build %q", b.Name, o.Name, o.NarHash, want)
				}
			}
			for name, p := range rb.outs {
				if _, err := f.reader.NarInfo(ctx, p); err != nil {
					t.Errorf("%s succeeded but output %s (%s) is not in the bucket: %v", b.Name, name, p, err)
					r.lost++
				}
			}
		}
	}
	c.checkRuns(t, byDrvName, r)
	c.checkAgentLogs(t, builds, r)
	c.checkBucket(t, refHash, builds, r)
	for _, a := range c.agents {
		a.mu.Lock()
		for _, ex := range a.exits {
			r.exits[ex.After]++
			// An agent rides out every fault: past its Lease term it begins a new one, through an
			// outage it keeps building what it owns.
			t.Errorf("agent %s exited on its own (code %d) at %s after %s", a.name, ex.Code, clock(ex.At), ex.After)
		}
		a.mu.Unlock()
	}
	for _, err := range f.ctrl.Errs() {
		t.Logf("the controller's manager returned: %v", err)
	}
	return r
}

// reference returns the NarHash every path should have: for the .drv files, busybox and the
// outputs of every derivation that does not fail by design, those of a reference build, the same
// expressions instantiated and realised by plain nix-store on a daemon of its own (no agent, no
// bucket, no /chaos: no sleeps; unsandboxed, which is quicker and changes nothing these builders
// write); for random outputs, the hash in the daemon of the agent whose attempt succeeded.
func (c *chaos) reference(t *testing.T, builds map[string]*farmv1.Build) map[string]string {
	f := c.f
	start := time.Now()
	if err := <-c.refDone; err != nil {
		t.Fatalf("reference build: %v", err)
	}
	ref := c.ref
	drvs, err := c.realiseReference(context.Background())
	if err != nil {
		t.Fatalf("reference build: %v", err)
	}
	t.Logf("reference build of %d derivations: %s after the farm had settled (%s in all)", len(drvs),
		time.Since(start).Round(100*time.Millisecond), time.Since(c.refStart).Round(100*time.Millisecond))

	var paths []string
	for _, p := range strings.Fields(ref.MustRun(t, "sh", "-c", "ls -d "+testbed.StoreDir+"/*")) {
		if !strings.HasSuffix(p, ".lock") {
			paths = append(paths, p)
		}
	}
	invalid := map[string]bool{}
	for _, p := range strings.Fields(ref.MustRun(t, append([]string{"nix-store", "--check-validity", "--print-invalid"}, paths...)...)) {
		invalid[p] = true
	}
	var q []string
	for _, p := range paths {
		if !invalid[p] {
			q = append(q, p)
		}
	}
	m := hashes(t, ref, q)
	// Random outputs: the winner's.
	byAgent := map[string][]string{}
	for key, n := range c.nodes {
		if !n.Random {
			continue
		}
		for _, p := range f.builds[key].outs {
			delete(m, p)
		}
		b := builds[f.builds[key].name]
		if b == nil || b.Status.Phase != farmv1.BuildSucceeded || len(b.Status.Attempts) == 0 {
			continue
		}
		agent := b.Status.Attempts[len(b.Status.Attempts)-1].Agent
		for _, p := range f.builds[key].outs {
			byAgent[agent] = append(byAgent[agent], p)
		}
	}
	for agent, ps := range byAgent {
		d := f.daemons[agent]
		if d == nil {
			t.Errorf("random outputs %v succeeded on %s, no agent of this test", ps, agent)
			continue
		}
		for p, h := range hashes(t, d, ps) {
			m[p] = h
		}
	}
	return m
}

// startReference starts the reference daemon and, in the background, instantiates and realises the
// DAGs submitted so far there (while the farm works: it is quick, unsandboxed); reference waits for
// it and realises what later DAGs added.
func (c *chaos) startReference(t *testing.T) {
	c.ref = testbed.StartNixDaemon(t, testbed.NixOptions{NoSandbox: true})
	if bb := c.ref.AddBusybox(t); bb != c.f.bb {
		t.Fatalf("busybox is %s in the reference store, %s in the submitter's", bb, c.f.bb)
	}
	c.refDone = make(chan error, 1)
	c.refStart = time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		_, err := c.realiseReference(ctx)
		c.refDone <- err
	}()
}

// realiseReference instantiates every DAG in the reference store (checking the .drv paths are the
// submitter's) and realises those that do not fail by design; it returns their .drv paths.
func (c *chaos) realiseReference(ctx context.Context) ([]string, error) {
	c.mu.Lock()
	rounds := slices.Clone(c.rounds)
	c.mu.Unlock()
	var drvs []string
	for _, rd := range rounds {
		args := []string{"nix-instantiate", rd.expr}
		for _, a := range rd.attrs {
			args = append(args, "-A", a)
		}
		data, err := c.ref.Run(ctx, args...)
		if err != nil {
			return nil, err
		}
		out := strings.Fields(string(data))
		c.mu.Lock()
		for i, key := range rd.keys {
			if i >= len(out) || out[i] != c.f.builds[key].drv {
				c.mu.Unlock()
				return nil, fmt.Errorf("the reference store instantiates %s as %v, the submitter as %s", key, out[i:min(i+1, len(out))], c.f.builds[key].drv)
			}
			if n := c.nodes[key]; !n.Fail && !n.blocked {
				drvs = append(drvs, out[i])
			}
		}
		c.mu.Unlock()
	}
	_, err := c.ref.Run(ctx, append([]string{"nix-store", "--realise", "-j", "4", "--quiet"}, drvs...)...)
	return drvs, err
}

// hashes asks d for the NarHash of paths (valid there).
func hashes(t *testing.T, d *testbed.NixDaemon, paths []string) map[string]string {
	m := map[string]string{}
	if len(paths) == 0 {
		return m
	}
	hs := strings.Fields(d.MustRun(t, append([]string{"nix-store", "-q", "--hash"}, paths...)...))
	if len(hs) != len(paths) {
		t.Fatalf("nix-store -q --hash gave %d hashes for %d paths", len(hs), len(paths))
	}
	for i, p := range paths {
		m[p] = hs[i]
	}
	return m
}

// checkAttempts: no two attempt records of b overlap (one agent's attempt ends before the next
// one's starts); a Build that does not fail by design spent none of its own retries
// (AttemptFailed) on faults of the farm.
func (c *chaos) checkAttempts(t *testing.T, b *farmv1.Build, r *chaosReport) {
	type span struct {
		agent    string
		from, to time.Time
	}
	var spans []span
	for _, a := range b.Status.Attempts {
		spans = append(spans, span{a.Agent, a.Start.Time, a.End.Time})
	}
	// The user's budget spent: attempts counted (releases give theirs back) but not lost to the
	// farm (status.lostAttempts), the successful one aside.
	if b.Status.Phase == farmv1.BuildSucceeded {
		if spent := b.Status.AttemptCount - b.Status.LostAttempts - 1; spent > 0 {
			r.userRetriesSpent += int(spent)
			var why []string
			for _, a := range b.Status.Attempts {
				if a.Result == farmv1.AttemptFailed && a.Reason != farmv1.ReasonAgentLost {
					why = append(why, fmt.Sprintf("%s on %s: %s", a.Reason, a.Agent, rbTail(a.Message, 300)))
				}
			}
			t.Errorf("%s: %d of the user's retries spent on faults of the farm: %s", b.Name, spent, strings.Join(why, " | "))
		}
	}
	if a := b.Status.Attempt; a != nil {
		spans = append(spans, span{a.Agent, a.Started.Time, time.Now()})
	}
	for i := range spans {
		for j := i + 1; j < len(spans); j++ {
			x, y := spans[i], spans[j]
			if x.agent != y.agent && x.from.Before(y.to) && y.from.Before(x.to) {
				r.attemptOverlaps++
				t.Errorf("%s: attempts on %s (%s–%s) and %s (%s–%s) overlap", b.Name, x.agent, x.from.Format(time.StampMilli),
					x.to.Format(time.StampMilli), y.agent, y.from.Format(time.StampMilli), y.to.Format(time.StampMilli))
			}
		}
	}
}

// checkRuns: from the daemons' records, no derivation ran on two agents at once unless a fault
// froze, cut off or killed one of them then (and it stopped within chaosGrace of the fault's end);
// every Succeeded Build's derivation ran to its end on some daemon.
func (c *chaos) checkRuns(t *testing.T, byDrvName map[string]*farmv1.Build, r *chaosReport) {
	runs := c.runs(t)
	r.runs = len(runs)
	double, excused := c.overlaps(runs)
	r.doubleRuns, r.excusedRuns = len(double), len(excused)
	for _, e := range excused {
		t.Log(e)
	}
	for _, d := range double {
		t.Error(d)
	}
	// The agent that succeeded may have substituted the output another agent's run published.
	for name, b := range byDrvName {
		if b.Status.Phase == farmv1.BuildSucceeded && !slices.ContainsFunc(runs, func(r chaosRun) bool { return r.Name == name && r.Ended }) {
			t.Errorf("%s succeeded, but no daemon has a complete run of it", b.Name)
		}
	}
}

// overlaps finds the runs of one derivation on two agents at once: double runs, and those a
// fault of one of the two agents excuses (see excused).
func (c *chaos) overlaps(runs []chaosRun) (double, excused []string) {
	byName := map[string][]chaosRun{}
	for _, run := range runs {
		byName[run.Name] = append(byName[run.Name], run)
	}
	for name, rs := range byName {
		for i := range rs {
			for j := i + 1; j < len(rs); j++ {
				x, y := rs[i], rs[j]
				if x.Agent == y.Agent {
					continue
				}
				from, to := later(x.From, y.From), earlier(x.To, y.To)
				if !from.Before(to) {
					continue
				}
				if ok, fault := c.excused(from, to, x.Agent, y.Agent); ok {
					excused = append(excused, fmt.Sprintf("%s ran on %s (%s–%s) and %s (%s–%s) at once, within %s", name,
						x.Agent, clock(x.From), clock(x.To), y.Agent, clock(y.From), clock(y.To), fault))
					continue
				}
				double = append(double, fmt.Sprintf("double run: %s ran on %s (%s–%s, ended %t) and %s (%s–%s, ended %t) at once, outside any fault of either",
					name, x.Agent, clock(x.From), clock(x.To), x.Ended, y.Agent, clock(y.From), clock(y.To), y.Ended))
			}
		}
	}
	sort.Strings(double)
	sort.Strings(excused)
	return double, excused
}

// TestChaosEvidence checks the chaos test's own evidence on made-up records: the builders'
// records are read into runs (a killed one ends a tick after its last record), and runs of one
// derivation on two agents at once are a double run unless a fault of one of them, plus
// chaosGrace, covers the overlap.
func TestChaosEvidence(t *testing.T) {
	boot := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return boot.Add(time.Duration(s * float64(time.Second))) }
	c := &chaos{boot: boot, faults: []chaosFault{{Kind: faultPause, Agent: "a", Start: at(100), End: at(108)}}}
	for name, records := range map[string]string{
		"a": "start d1 99.00\ntick d1 99.20\nend d1 99.30\n" + // alone
			"start d2 101.00\ntick d2 101.20\ntick d2 112.00\n" + // paused, overlaps b's run, killed at 112.2
			"start d3 120.00\ntick d3 121.00\nend d3 125.00\n", // overlaps b's run, no fault
		"b": "start d2 109.00\nend d2 111.00\n" + "start d3 124.00\nend d3 126.00\n",
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "runs"), []byte(records), 0o644); err != nil {
			t.Fatal(err)
		}
		c.agents = append(c.agents, &chaosAgent{name: name, records: dir})
	}
	runs := c.runs(t)
	if len(runs) != 5 {
		t.Fatalf("%d runs read, want 5: %+v", len(runs), runs)
	}
	for _, r := range runs {
		if r.Agent == "a" && r.Name == "d2" && (r.Ended || !r.To.Equal(at(112).Add(chaosTick))) {
			t.Errorf("killed run %+v: want not ended, ending a tick after its last record", r)
		}
	}
	double, excused := c.overlaps(runs)
	if len(double) != 1 || !strings.Contains(double[0], "d3") {
		t.Errorf("double runs %q, want d3's", double)
	}
	if len(excused) != 1 || !strings.Contains(excused[0], "d2") || !strings.Contains(excused[0], faultPause) {
		t.Errorf("excused overlaps %q, want d2's, by the pause", excused)
	}
	// Past the grace, the same overlap is a double run.
	c.faults[0].End = at(108).Add(-chaosGrace - 5*time.Second)
	if double, _ := c.overlaps(runs); len(double) != 2 {
		t.Errorf("with the pause over long before: double runs %q, want d2's and d3's", double)
	}
}

// agentLogLine is what checkAgentLogs reads of the agents' JSON logs.
type agentLogLine struct {
	TS        string `json:"ts"`
	Msg       string `json:"msg"`
	Build     string `json:"build"`
	Attempt   int32  `json:"attempt"`
	StorePath string `json:"storePath"`
}

// chaosSpan is an attempt of an agent on a Build, from the Build's status.
type chaosSpan struct {
	from, to time.Time
	result   farmv1.AttemptResult
	reason   string
}

// checkAgentLogs: every narinfo an agent wrote (its "published" log lines) was written while it
// held an attempt of the Build of that path or of a Build depending on it (whose closure it
// publishes): an attempt record that started before and had not ended more than 2 s before (the
// records' times are truncated to the second, and the controller writes the end a moment after
// it decides it). A success the Build never recorded (its successful attempt is another's) is
// counted: a result lost, or an attempt the agent no longer held.
func (c *chaos) checkAgentLogs(t *testing.T, builds map[string]*farmv1.Build, r *chaosReport) {
	f := c.f
	// Whose output each path is, and who depends on whom (transitively).
	c.mu.Lock()
	outputOf := map[string]string{} // store path -> node key
	for key := range c.nodes {
		for _, p := range f.builds[key].outs {
			outputOf[p] = key
		}
	}
	dependents := map[string][]string{} // key -> keys of direct dependents
	for key, n := range c.nodes {
		round, _, _ := strings.Cut(key, ".")
		for _, d := range n.Deps {
			dependents[round+"."+d] = append(dependents[round+"."+d], key)
		}
	}
	c.mu.Unlock()
	closureOf := func(key string) []string { // key and its transitive dependents
		seen := map[string]bool{key: true}
		todo, all := []string{key}, []string{key}
		for len(todo) > 0 {
			k := todo[0]
			todo = todo[1:]
			for _, d := range dependents[k] {
				if !seen[d] {
					seen[d] = true
					todo = append(todo, d)
					all = append(all, d)
				}
			}
		}
		return all
	}
	spans := func(agent string, b *farmv1.Build) []chaosSpan {
		var s []chaosSpan
		for _, a := range b.Status.Attempts {
			if a.Agent == agent {
				s = append(s, chaosSpan{a.Start.Time, a.End.Time, a.Result, a.Reason})
			}
		}
		if a := b.Status.Attempt; a != nil && a.Agent == agent {
			s = append(s, chaosSpan{a.Started.Time, time.Now(), "", "running"})
		}
		return s
	}
	for _, a := range c.agents {
		a.mu.Lock()
		procs := slices.Clone(a.procs)
		a.mu.Unlock()
		for _, p := range procs {
			for _, line := range strings.Split(p.Log(t), "\n") {
				var l agentLogLine
				if json.Unmarshal([]byte(line), &l) != nil {
					continue
				}
				at, err := time.Parse(time.RFC3339Nano, l.TS)
				if err != nil {
					continue
				}
				switch l.Msg {
				case "published":
					key, ok := outputOf[l.StorePath]
					if !ok {
						continue // a .drv, busybox
					}
					held := false
					var last []chaosSpan
					for _, k := range closureOf(key) {
						b := builds[f.builds[k].name]
						if b == nil {
							continue
						}
						for _, sp := range spans(a.name, b) {
							if !sp.from.After(at) && at.Before(sp.to.Add(2*time.Second)) {
								held = true
							}
							if k == key {
								last = append(last, sp)
							}
						}
					}
					if !held {
						r.zombiePublications++
						t.Errorf("%s published %s (of %s) at %s holding no attempt of it or of a Build depending on it; its attempts of %s: %+v",
							a.name, l.StorePath, f.builds[key].name, clock(at), f.builds[key].name, last)
					}
				case "Build succeeded":
					_, name, _ := strings.Cut(l.Build, "/")
					b := builds[name]
					if b == nil {
						continue
					}
					n := len(b.Status.Attempts)
					if b.Status.Phase == farmv1.BuildSucceeded && n > 0 && b.Status.Attempts[n-1].Agent == a.name &&
						b.Status.AttemptCount == l.Attempt {
						continue // the success that counted
					}
					r.unreported++
					t.Logf("%s: %s's success of attempt %d at %s was not the one that counted (attempts %s)",
						b.Name, a.name, l.Attempt, clock(at), attemptsString(b))
				}
			}
		}
	}
}

// checkBucket: every narinfo parses, is signed by the farm, names a nar that is there with the
// FileHash and (decompressed) the NarHash the narinfo says, and that NarHash is the reference
// build's.
func (c *chaos) checkBucket(t *testing.T, refHash map[string]string, builds map[string]*farmv1.Build, r *chaosReport) {
	f := c.f
	randomOutput := map[string]string{} // path -> node key
	c.mu.Lock()
	for key, n := range c.nodes {
		if n.Random {
			for _, p := range f.builds[key].outs {
				randomOutput[p] = key
			}
		}
	}
	c.mu.Unlock()
	ctx := context.Background()
	mc := f.minio.Client
	bad := func(format string, args ...any) {
		r.badNarinfos++
		t.Errorf("bad narinfo: "+format, args...)
	}
	for o := range mc.ListObjects(ctx, rbBucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		if !strings.HasSuffix(o.Key, ".narinfo") {
			continue
		}
		r.narinfos++
		data, err := readObject(ctx, mc, o.Key)
		if err != nil {
			t.Fatal(err)
		}
		ni, err := narinfo.Parse(data)
		if err != nil {
			bad("%s: %v", o.Key, err)
			continue
		}
		if _, err := f.reader.NarInfo(ctx, ni.StorePath); err != nil {
			bad("%s: %v", o.Key, err)
			continue
		}
		if want, ok := refHash[ni.StorePath]; !ok {
			if key, random := randomOutput[ni.StorePath]; random {
				b := builds[f.builds[key].name]
				bad("%s: random output of %s, which did not succeed (%s): an attempt that failed or was lost published it", ni.StorePath,
					f.builds[key].name, rbState(b))
			} else {
				bad("%s: %s is no path of the reference store", o.Key, ni.StorePath)
			}
		} else if ni.NarHash != want {
			bad("%s: NarHash %s, the reference build's %s", ni.StorePath, ni.NarHash, want)
		}
		fileHash, narHash, err := narHashes(ctx, mc, ni)
		switch {
		case err != nil:
			bad("%s: its nar %s: %v", ni.StorePath, ni.URL, err)
		case fileHash != ni.FileHash:
			bad("%s: nar %s has FileHash %s, the narinfo says %s", ni.StorePath, ni.URL, fileHash, ni.FileHash)
		case narHash != ni.NarHash:
			bad("%s: nar %s holds NarHash %s, the narinfo says %s", ni.StorePath, ni.URL, narHash, ni.NarHash)
		}
	}
}

func readObject(ctx context.Context, mc *minio.Client, key string) ([]byte, error) {
	obj, err := mc.GetObject(ctx, rbBucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	return io.ReadAll(obj)
}

// narHashes reads ni's nar object and returns the hash of the file and of the nar it decompresses to.
func narHashes(ctx context.Context, mc *minio.Client, ni *narinfo.NarInfo) (string, string, error) {
	data, err := readObject(ctx, mc, ni.URL)
	if err != nil {
		return "", "", err
	}
	fileHash, _, err := nar.Hash(bytes.NewReader(data))
	if err != nil {
		return "", "", err
	}
	kind, err := compress.ParseKind(ni.Compression)
	if err != nil {
		return "", "", err
	}
	zr, err := compress.NewReader(bytes.NewReader(data), kind)
	if err != nil {
		return "", "", err
	}
	defer zr.Close()
	narHash, _, err := nar.Hash(zr)
	if err != nil {
		return "", "", fmt.Errorf("decompressing: %w", err)
	}
	return fileHash, narHash, nil
}

// keepArtifacts copies the logs and records into -chaos.artifacts, if set.
func (c *chaos) keepArtifacts(t *testing.T) {
	dir := *chaosArtifacts
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Log(err)
		return
	}
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Log(err)
		}
	}
	for _, a := range c.agents {
		a.mu.Lock()
		procs := slices.Clone(a.procs)
		a.mu.Unlock()
		var log strings.Builder
		for i, p := range procs {
			fmt.Fprintf(&log, "=== incarnation %d (pid %d)\n%s", i, p.Pid(), p.Log(t))
		}
		write(a.name+".log", log.String())
		if data, err := os.ReadFile(filepath.Join(a.records, "runs")); err == nil {
			write(a.name+".runs", string(data))
		}
		write(a.name+".daemon.log", a.daemon.Logs())
	}
	var faults strings.Builder
	c.mu.Lock()
	for _, fl := range c.faults {
		fmt.Fprintf(&faults, "%s %s %s %s\n", fl.Start.Format(time.RFC3339Nano), fl.End.Format(time.RFC3339Nano), fl.Kind, fl.Agent)
	}
	c.mu.Unlock()
	write("faults", faults.String())
	write("boot", c.boot.Format(time.RFC3339Nano)+"\n")
	write("controller.log", c.f.ctrlLog.String())
	if bs, err := json.MarshalIndent(listBuildsNoFail(c.f.ns), "", " "); err == nil {
		write("builds.json", string(bs))
	}
	t.Logf("logs and records kept in %s", dir)
}

func listBuildsNoFail(ns string) []farmv1.Build {
	var l farmv1.BuildList
	if err := env.Client.List(context.Background(), &l, client.InNamespace(ns)); err != nil {
		return nil
	}
	return l.Items
}

func attemptsString(b *farmv1.Build) string {
	var s []string
	for _, a := range b.Status.Attempts {
		s = append(s, fmt.Sprintf("%s %s–%s %s/%s", a.Agent, clock(a.Start.Time), clock(a.End.Time), a.Result, a.Reason))
	}
	if a := b.Status.Attempt; a != nil {
		s = append(s, fmt.Sprintf("%s %s– running", a.Agent, clock(a.Started.Time)))
	}
	return "[" + strings.Join(s, "; ") + "]"
}

func clock(t time.Time) string { return t.Format("15:04:05.000") }

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
