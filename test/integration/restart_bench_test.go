package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/test/farm"
)

// restartBuilds is how many Builds BenchmarkControllerRestart loads: 10,000 in `make bench`;
// GUIXFARM_RESTART_BUILDS=100000 runs a distribution's queue (about 15 minutes here).
func restartBuilds(b *testing.B) int {
	if s := os.Getenv("GUIXFARM_RESTART_BUILDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("GUIXFARM_RESTART_BUILDS=%q: want a positive number", s)
		}
		return n
	}
	return 10_000
}

// distroDrvs writes n .drv files shaped like a distribution's queue: chains up to 150 deep, six
// toolchain hubs every derivation depends on (~n/6 dependents each), and up to two more inputs
// among the earlier derivations. Every derivation gets a Build, so no input is left to the bucket.
func distroDrvs(b testing.TB, n int) (*farm.Drvs, []string) {
	b.Helper()
	drvs := farm.NewDrvs(b)
	rng := rand.New(rand.NewPCG(uint64(n), 7))
	paths := make([]string, n)
	const hubs, depth = 6, 150
	for i := range n {
		var inputs []string
		switch {
		case i < hubs:
		default:
			inputs = append(inputs, paths[i%hubs])
			if i%depth != 0 && i-1 >= hubs {
				inputs = append(inputs, paths[i-1])
			}
			for k := rng.IntN(3); k > 0 && i > hubs; k-- {
				inputs = append(inputs, paths[hubs+rng.IntN(i-hubs)])
			}
		}
		paths[i] = drvs.Add(b, fmt.Sprintf("pkg-%06d-1.0", i), "x86_64-linux", i, dedup(inputs)...)
	}
	return drvs, paths
}

func dedup(s []string) []string {
	seen := map[string]bool{}
	out := s[:0]
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// BenchmarkControllerRestart: the real controller binary starts against an apiserver that
// already holds n pending Builds (created while no controller ran; 10^4, or
// GUIXFARM_RESTART_BUILDS) of a distribution-shaped DAG, derivation-ordered, .drv files from a
// directory, with three agents (8 slots each) waiting: the cold start of a distribution's farm.
// Once every Build has its facts and the work queue is empty, the controller is killed and
// started again: the warm restart. Reported, for each: the time to the first full plan and to
// all facts (work queue empty), and per Build the controller's writes (PATCH, PUT, DELETE),
// Events (POSTs), and reconciles; allocation withdrawals per start; the controller's peak RSS;
// after the cold start, the apiserver's RSS and etcd's bytes per Build. create-s is how long
// the creates took (the apiserver's share, for reference). For docs/scale.md it also reports
// which parts of a stored Build are managed fields and status, a Build's size before any status
// was written, the apiserver's heap per Build, how long a List of the queue takes, and a Lease's
// size (GUIXFARM_APISERVER_ARGS runs the same against an apiserver with other flags).
func BenchmarkControllerRestart(b *testing.B) {
	n := restartBuilds(b)
	ctx := context.Background()
	ns := env.Namespace(b, "restart")
	start := time.Now()
	drvs, paths := distroDrvs(b, n)
	b.Logf("%d .drv files written in %s", n, time.Since(start).Round(time.Second))
	apiBase := apiserverMem(b)
	start = time.Now()
	parallel(16, n, func(i int) error {
		return env.Client.Create(ctx, farm.MakeBuild(fmt.Sprintf("pkg-%06d", i), ns, paths[i]).Priority(int32(i%100)).Obj())
	})
	created := time.Since(start)
	// The Builds as clients submit them, spec only, before any controller wrote a status: the
	// smallest a queued Build can be (docs/scale.md compares it with what the controller writes).
	specOnly := etcdShares(b, "/registry/build.guixfarm.io/builds/"+ns+"/")
	apiSpec := apiserverMem(b)
	listCache, listEtcd := listTimes(b, ns)
	kc := env.Kubeconfig(b)
	for i := range 3 {
		env.StartAgent(b, kc, ns, farm.AgentSpec{Name: fmt.Sprintf("agent-%d", i), Systems: []string{"x86_64-linux"},
			Slots: 8, TestDuration: time.Hour, LeaseDuration: time.Minute})
	}
	bin := farm.Binary(b, "guix-farm-controller")
	var cold, warm restartRun
	for range b.N {
		cold = restartOnce(b, bin, kc, ns, drvs.Dir, n)
		warm = restartOnce(b, bin, kc, ns, drvs.Dir, n)
	}
	per := func(v float64) float64 { return v / float64(n) }
	b.ReportMetric(cold.firstPlan.Seconds(), "first-plan-s")
	b.ReportMetric(cold.allFacts.Seconds(), "all-facts-s")
	b.ReportMetric(per(cold.writes), "writes/build")
	b.ReportMetric(per(cold.events), "events/build")
	b.ReportMetric(per(cold.reconciles), "reconciles/build")
	b.ReportMetric(per(cold.unchanged), "unchanged-reconciles/build")
	b.ReportMetric(per(cold.behind), "behind-reconciles/build")
	b.ReportMetric(per(cold.waitChanges), "wait-changes/build")
	b.ReportMetric(cold.withdrawals, "withdrawals")
	b.ReportMetric(cold.rss, "peak-RSS-MiB")
	b.ReportMetric(cold.cpu, "controller-cpu-s")
	b.ReportMetric(cold.apiCPU, "apiserver-cpu-s")
	b.ReportMetric(warm.firstPlan.Seconds(), "warm-first-plan-s")
	b.ReportMetric(warm.allFacts.Seconds(), "warm-all-facts-s")
	b.ReportMetric(per(warm.writes), "warm-writes/build")
	b.ReportMetric(warm.withdrawals, "warm-withdrawals")
	b.ReportMetric(warm.rss, "warm-peak-RSS-MiB")
	b.ReportMetric(created.Seconds(), "create-s")
	b.ReportMetric(float64(n), "builds")
	if pid := env.APIServerPID(); pid != 0 {
		b.ReportMetric(peakRSS(b, pid)*1024/float64(n), "apiserver-KiB/build")
	}
	sh := etcdShares(b, "/registry/build.guixfarm.io/builds/"+ns+"/")
	count := max(sh.count, 1)
	b.ReportMetric(float64(sh.total)/float64(count), "etcd-bytes/build")
	b.ReportMetric(float64(sh.managedFields)/float64(count), "etcd-managedfields-bytes/build")
	b.ReportMetric(float64(sh.status)/float64(count), "etcd-status-bytes/build")
	b.ReportMetric(float64(specOnly.total)/float64(max(specOnly.count, 1)), "etcd-spec-only-bytes/build")
	b.ReportMetric(float64(specOnly.managedFields)/float64(max(specOnly.count, 1)), "etcd-spec-only-managedfields-bytes/build")
	// The apiserver's memory per Build, net of what it held before the creates: its Go heap in
	// use (from its /metrics; less noisy than RSS, which keeps freed pages) after the creates
	// (spec only) and after the cold start (with the controller's status).
	apiFacts := apiserverMem(b)
	b.ReportMetric((apiSpec.heap-apiBase.heap)/1024/float64(n), "apiserver-heap-spec-KiB/build")
	b.ReportMetric((apiFacts.heap-apiBase.heap)/1024/float64(n), "apiserver-heap-KiB/build")
	b.ReportMetric((apiFacts.rss-apiBase.rss)/1024/float64(n), "apiserver-rss-delta-KiB/build")
	// Right after the cold start the apiserver's heap still holds the watch cache's history of
	// the creates and status writes (it keeps the last 75 s of events). GUIXFARM_RESTART_SETTLE
	// (a duration, e.g. 90s) waits that long and reads the heap again: what a queue that sits
	// still costs. Opt-in, so `make bench` does not wait.
	if d, err := time.ParseDuration(os.Getenv("GUIXFARM_RESTART_SETTLE")); err == nil && d > 0 {
		time.Sleep(d)
		settled := apiserverMem(b)
		b.ReportMetric((settled.heap-apiBase.heap)/1024/float64(n), "apiserver-heap-settled-KiB/build")
	}
	// An agent's Lease, for the renewal budget of 10^4 agents (docs/scale.md).
	leases := etcdShares(b, "/registry/leases/"+ns+"/")
	b.ReportMetric(float64(leases.total)/float64(max(leases.count, 1)), "etcd-bytes/lease")
	b.ReportMetric(listCache.Seconds(), "list-rv0-s")
	b.ReportMetric(listEtcd.Seconds(), "list-consistent-s")
}

// apiMem is the apiserver's memory at one moment, in bytes.
type apiMem struct{ heap, rss float64 }

// apiserverMem reads the apiserver's Go heap in use from its /metrics and its resident set from
// /proc (0 when the apiserver is not a child of this process).
func apiserverMem(b *testing.B) apiMem {
	b.Helper()
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		b.Fatal(err)
	}
	// The heap profile with gc=1 makes the apiserver collect its garbage first (profiling is on
	// by default), so the heap in use read next is close to its live heap, not to wherever its
	// GC cycle happened to be (two reads without it differed by 2x).
	if _, err := cs.Discovery().RESTClient().Get().AbsPath("/debug/pprof/heap").Param("gc", "1").DoRaw(context.Background()); err != nil {
		b.Fatalf("asking the apiserver for a GC: %v", err)
	}
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		b.Fatalf("reading the apiserver's metrics: %v", err)
	}
	var m apiMem
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "go_memstats_heap_inuse_bytes "); ok {
			m.heap, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if pid := env.APIServerPID(); pid != 0 {
		m.rss = procStatusKiB(b, pid, "VmRSS:") * 1024
	}
	return m
}

// listTimes is how long one full List of the namespace's Builds takes: with resourceVersion=0,
// as an informer's first list asks (served by the watch cache when it holds Builds), and a
// consistent list (from the watch cache when it is on and fresh, else from etcd). A controller's
// cold start waits for the first.
func listTimes(b *testing.B, ns string) (rv0, consistent time.Duration) {
	b.Helper()
	ctx := context.Background()
	for i, rv := range []string{"0", ""} {
		var l farmv1.BuildList
		start := time.Now()
		if err := env.Client.List(ctx, &l, client.InNamespace(ns), &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: rv}}); err != nil {
			b.Fatalf("listing builds (resourceVersion %q): %v", rv, err)
		}
		if i == 0 {
			rv0 = time.Since(start)
		} else {
			consistent = time.Since(start)
		}
	}
	return rv0, consistent
}

// restartRun is what one start of the controller measured.
type restartRun struct {
	firstPlan, allFacts                     time.Duration
	writes, events, reconciles, withdrawals float64
	// unchanged and behind are the reconciles that wrote nothing, by why (the build controller's
	// guixfarm_controller_build_reconciles_total).
	unchanged, behind float64
	// waitChanges are the planner's reports of a changed wait reason (each asks for a reconcile).
	waitChanges float64
	rss         float64
	// cpu is the controller's CPU time, apiCPU the apiserver's over the same start.
	cpu, apiCPU float64
}

// restartOnce runs the controller until its first full planning pass and its work queue is empty
// with every Build reconciled at least once, then kills it; it returns what it measured.
func restartOnce(b *testing.B, bin, kubeconfig, ns, drvDir string, n int) restartRun {
	b.Helper()
	addr, probe := freeAddr(b), freeAddr(b)
	logf, err := os.Create(b.TempDir() + "/controller.log")
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	pprofAddr := freeAddr(b)
	cmd := exec.Command(bin, "--kubeconfig", kubeconfig, "--namespace", ns, "--strategy", "derivation-ordered",
		"--drv-dir", drvDir, "--expected-builds", strconv.Itoa(n), "--metrics-bind-address", addr,
		"--health-probe-bind-address", probe, "--build-ttl", "0", "--pprof-bind-address", pprofAddr,
		"--memory-limit", restartMemoryLimit(n))
	// GUIXFARM_RESTART_CONTROLLER_ARGS adds flags to the controller (e.g. --quiet-queue), to
	// measure a lever of docs/scale.md on the same queue.
	cmd.Args = append(cmd.Args, strings.Fields(os.Getenv("GUIXFARM_RESTART_CONTROLLER_ARGS"))...)
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	var run restartRun
	apiCPU := cpuSeconds(env.APIServerPID())
	deadline := start.Add(30 * time.Minute)
	for time.Now().Before(deadline) {
		m := scrape(addr)
		// Ready means the caches have synced and the first plan over the whole model is done.
		if run.firstPlan == 0 && ready(probe) {
			run.firstPlan = time.Since(start)
		}
		if run.firstPlan != 0 && m.sum("controller_runtime_reconcile_total", `controller="build"`) >= float64(n) &&
			m.has("workqueue_depth", `name="build"`) && m.sum("workqueue_depth", `name="build"`) == 0 {
			run.allFacts = time.Since(start)
			run.writes = m.sum("rest_client_requests_total", `method="PATCH"`) + m.sum("rest_client_requests_total", `method="PUT"`) +
				m.sum("rest_client_requests_total", `method="DELETE"`)
			run.events = m.sum("rest_client_requests_total", `method="POST"`)
			run.reconciles = m.sum("controller_runtime_reconcile_total", `controller="build"`)
			run.unchanged = m.sum("guixfarm_controller_build_reconciles_total", `outcome="unchanged"`)
			run.behind = m.sum("guixfarm_controller_build_reconciles_total", `outcome="behind"`)
			run.waitChanges = m.sum("guixfarm_controller_wait_changes_total")
			b.Logf("wait changes by reason: %q; reconciles by outcome: %q", m.matching("guixfarm_controller_wait_changes_total", nil),
				m.matching("guixfarm_controller_build_reconciles_total", nil))
			run.withdrawals = m.sum("guixfarm_allocations_total", `kind="withdraw"`)
			run.rss = peakRSS(b, cmd.Process.Pid)
			run.cpu = cpuSeconds(cmd.Process.Pid)
			run.apiCPU = cpuSeconds(env.APIServerPID()) - apiCPU
			if dir := os.Getenv("GUIXFARM_RESTART_PROFILES"); dir != "" {
				saveHeapProfile(b, pprofAddr, dir)
			}
			return run
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(logf.Name())
	b.Fatalf("the controller did not load and settle %d Builds in 30 minutes (first plan %s); its log ends:\n%s",
		n, run.firstPlan, tailString(string(log), 3000))
	return run
}

// ready says whether the controller's /readyz passes.
func ready(addr string) bool {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// metricLines are the sample lines of a Prometheus text exposition.
type metricLines []string

// scrape reads the controller's metrics (none while it is not up).
func scrape(addr string) metricLines {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var m metricLines
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if line := sc.Text(); line != "" && line[0] != '#' {
			m = append(m, line)
		}
	}
	return m
}

// sum adds the samples of metric name whose labels contain every one of labels.
func (m metricLines) sum(name string, labels ...string) float64 {
	total := 0.0
	for _, line := range m.matching(name, labels) {
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		total += v
	}
	return total
}

func (m metricLines) has(name string, labels ...string) bool {
	return len(m.matching(name, labels)) > 0
}

func (m metricLines) matching(name string, labels []string) []string {
	var out []string
	for _, line := range m {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// peakRSS is a process's high-water resident set size (VmHWM), in MiB.
func peakRSS(b *testing.B, pid int) float64 {
	return procStatusKiB(b, pid, "VmHWM:") / 1024
}

// procStatusKiB reads one kB field (VmHWM:, VmRSS:) of /proc/<pid>/status.
func procStatusKiB(b *testing.B, pid int, field string) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return float64(kb)
		}
	}
	b.Fatalf("no %s in /proc/<pid>/status", field)
	return 0
}

// cpuSeconds is the CPU time (user and system) process pid has used.
func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
	rest := string(data)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100 // USER_HZ
}

func tailString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

// saveHeapProfile keeps the controller's heap profile (GUIXFARM_RESTART_PROFILES=dir), for
// `go tool pprof -sample_index=inuse_space`: where a large queue's memory goes.
func saveHeapProfile(b *testing.B, addr, dir string) {
	resp, err := http.Get("http://" + addr + "/debug/pprof/heap")
	if err != nil {
		b.Logf("heap profile: %v", err)
		return
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Logf("heap profile: %v", err)
		return
	}
	f := filepath.Join(dir, fmt.Sprintf("controller-heap-%d.pb.gz", time.Now().UnixNano()))
	if err := os.WriteFile(f, data, 0o644); err != nil {
		b.Logf("heap profile: %v", err)
		return
	}
	b.Logf("heap profile in %s", f)
}

// restartMemoryLimit is the controller's soft memory limit for a queue of n Builds: the sizing
// docs/scale.md recommends (40 MiB plus 4.4 KiB per Build: 470 MiB at 10^5; the RSS runs 18-31 MiB
// above it), or GUIXFARM_RESTART_MEMORY_LIMIT (0: none).
func restartMemoryLimit(n int) string {
	if v := os.Getenv("GUIXFARM_RESTART_MEMORY_LIMIT"); v != "" {
		return v
	}
	return fmt.Sprintf("%dKi", 40*1024+n*44/10)
}
