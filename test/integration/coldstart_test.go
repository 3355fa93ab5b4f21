package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/test/farm"
)

const coldStartBuilds = 3000

// TestColdStartPlansFromALoadedModel: the controller binary starts against 3,000 pending Builds
// of a distribution-shaped DAG (derivation-ordered, no facts yet) with agents already waiting.
// /readyz fails until the caches have synced and the first plan over the whole model is done,
// and the first builds the agents claim carry the highest derived priority of the whole queue:
// no build is allocated from a partly loaded model, where priorities are not yet known.
func TestColdStartPlansFromALoadedModel(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "coldstart")
	drvs, paths := distroDrvs(t, coldStartBuilds)
	maxPriority := int32(0)
	parallel(16, coldStartBuilds, func(i int) error {
		return env.Client.Create(ctx, farm.MakeBuild(fmt.Sprintf("pkg-%06d", i), ns, paths[i]).Priority(int32(i%100)).Obj())
	})
	for i := range coldStartBuilds {
		maxPriority = max(maxPriority, int32(i%100))
	}
	kc := env.Kubeconfig(t)
	const agents, slots = 2, 2
	for i := range agents {
		env.StartAgent(t, kc, ns, farm.AgentSpec{Name: fmt.Sprintf("agent-%d", i), Systems: []string{"x86_64-linux"},
			Slots: slots, TestDuration: 5 * time.Minute, LeaseDuration: 20 * time.Second})
	}

	probe := freeAddr(t)
	logf, err := os.Create(t.TempDir() + "/controller.log")
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(farm.Binary(t, "guix-farm-controller"), "--kubeconfig", kc, "--namespace", ns,
		"--strategy", "derivation-ordered", "--drv-dir", drvs.Dir, "--expected-builds", strconv.Itoa(coldStartBuilds),
		"--metrics-bind-address", "0", "--health-probe-bind-address", probe, "--build-ttl", "0")
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			log, _ := os.ReadFile(logf.Name())
			t.Logf("controller log:\n%s", tailString(string(log), 4000))
		}
	}()

	notReady, ready := 0, time.Duration(0)
	waitFor(t, 5*time.Minute, "/readyz to pass", func() (bool, string) {
		resp, err := http.Get("http://" + probe + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			notReady++
			return false, resp.Status
		}
		ready = time.Since(start)
		return true, ""
	})
	if notReady == 0 {
		t.Errorf("/readyz passed at its first answer, before %d Builds could have been loaded", coldStartBuilds)
	}

	var claimed []farmv1.Build
	waitFor(t, 2*time.Minute, "the agents to claim their slots", func() (bool, string) {
		claimed = claimed[:0]
		for _, b := range listBuilds(t, ns) {
			if b.Status.Attempt != nil {
				claimed = append(claimed, b)
			}
		}
		return len(claimed) >= agents*slots, fmt.Sprintf("%d claimed", len(claimed))
	})
	slices.SortFunc(claimed, func(a, b farmv1.Build) int { return a.Status.Attempt.Started.Compare(b.Status.Attempt.Started.Time) })
	t.Logf("ready after %s (%d answers not ready); first claim %s after start", ready.Round(100*time.Millisecond), notReady,
		claimed[0].Status.Attempt.Started.Sub(start).Round(100*time.Millisecond))
	for _, b := range claimed[:agents*slots] {
		if b.Status.Allocation == nil || b.Status.Allocation.Priority != maxPriority {
			t.Errorf("%s claimed with derived priority %v; the queue's highest is %d", b.Name, b.Status.Allocation, maxPriority)
		}
	}
}

// freeAddr is a loopback address nothing listens on (yet).
func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
