package integration

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/test/farm"
)

// restartBuilds is how many Builds BenchmarkControllerRestart loads (GUIXFARM_RESTART_BUILDS
// overrides it, e.g. for a quick run).
func restartBuilds(b *testing.B) int {
	if s := os.Getenv("GUIXFARM_RESTART_BUILDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("GUIXFARM_RESTART_BUILDS=%q: want a positive number", s)
		}
		return n
	}
	return 100_000
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
// already holds 100,000 pending Builds (created while no controller ran) of a
// distribution-shaped DAG, derivation-ordered, .drv files from a directory, no agents: the
// restart of a distribution's farm. Timed: from the process's start to the end of the first
// planning pass that models every Build (its queue-depth metric, set after each pass, reaches
// the count). first-plan-s is that time; peak-RSS-MiB the process's high-water RSS (VmHWM) then;
// create-s how long the creates took (untimed; the apiserver's share, for reference).
func BenchmarkControllerRestart(b *testing.B) {
	n := restartBuilds(b)
	ctx := context.Background()
	ns := env.Namespace(b, "restart")
	start := time.Now()
	drvs, paths := distroDrvs(b, n)
	b.Logf("%d .drv files written in %s", n, time.Since(start).Round(time.Second))
	start = time.Now()
	parallel(16, n, func(i int) error {
		return env.Client.Create(ctx, farm.MakeBuild(fmt.Sprintf("pkg-%06d", i), ns, paths[i]).Priority(int32(i%100)).Obj())
	})
	created := time.Since(start)
	bin := farm.Binary(b, "guix-farm-controller")
	kc := env.Kubeconfig(b)
	var first time.Duration
	var rss float64
	for range b.N {
		first, rss = restartOnce(b, bin, kc, ns, drvs.Dir, n)
	}
	b.ReportMetric(first.Seconds(), "first-plan-s")
	b.ReportMetric(rss, "peak-RSS-MiB")
	b.ReportMetric(created.Seconds(), "create-s")
	b.ReportMetric(float64(n), "builds")
}

// restartOnce runs the controller until its first full planning pass and returns how long that
// took and the process's peak RSS in MiB.
func restartOnce(b *testing.B, bin, kubeconfig, ns, drvDir string, n int) (time.Duration, float64) {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	logf, err := os.Create(b.TempDir() + "/controller.log")
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "--kubeconfig", kubeconfig, "--namespace", ns, "--strategy", "derivation-ordered",
		"--drv-dir", drvDir, "--expected-builds", strconv.Itoa(n), "--metrics-bind-address", addr,
		"--health-probe-bind-address", "0", "--build-ttl", "0")
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	deadline := start.Add(20 * time.Minute)
	for time.Now().Before(deadline) {
		if queued(addr) >= n {
			took := time.Since(start)
			return took, peakRSS(b, cmd.Process.Pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	log, _ := os.ReadFile(logf.Name())
	b.Fatalf("the controller modelled fewer than %d Builds after 20 minutes (queue depth %d); its log ends:\n%s",
		n, queued(addr), tailString(string(log), 3000))
	return 0, 0
}

// queued sums the controller's guixfarm_queue_depth metric (0 while it is not up).
func queued(addr string) int {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	total := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "guixfarm_queue_depth{") {
			continue
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		total += v
	}
	return int(total)
}

// peakRSS is a process's high-water resident set size (VmHWM), in MiB.
func peakRSS(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return float64(kb) / 1024
		}
	}
	b.Fatal("no VmHWM in /proc/<pid>/status")
	return 0
}

func tailString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
