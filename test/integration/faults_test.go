package integration

import (
	"context"
	"net/http"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/test/farm"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// TestFaultUtilities checks the fault injectors other tests rely on: the apiserver stopped and
// started again serves the same clients (same address, certificates, etcd, objects); an agent
// behind a partitioned proxy cannot renew its Lease while the apiserver stays up, and renews once
// healed; SIGSTOP stops an agent's renewals, SIGCONT resumes them; a killed agent restarted under
// its name holds its Lease again; the in-process controller stops and starts; MinIO restarts with
// its data.
func TestFaultUtilities(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "faults")
	drvs := farm.NewDrvs(t)
	ctrl := env.RunController(t, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.Basic})
	kc, proxy := env.PartitionableKubeconfig(t)
	agent := env.StartAgent(t, kc, ns, farm.AgentSpec{Name: "agent-p", Systems: []string{"x86_64-linux"}, Slots: 1,
		TestDuration: 100 * time.Millisecond, LeaseDuration: 4 * time.Second})

	renewTime := func() time.Time {
		var l coordinationv1.Lease
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "agent-p"}, &l); err != nil || l.Spec.RenewTime == nil {
			return time.Time{}
		}
		return l.Spec.RenewTime.Time
	}
	renews := func(what string) {
		t.Helper()
		before := renewTime()
		waitFor(t, 10*time.Second, what, func() (bool, string) {
			return renewTime().After(before), "renewTime " + before.String()
		})
	}
	noRenewal := func(what string, d time.Duration) {
		t.Helper()
		// A renewal the agent sent just before the fault may still land: let it, then watch.
		time.Sleep(500 * time.Millisecond)
		before := renewTime()
		time.Sleep(d)
		if after := renewTime(); after.After(before) && !before.IsZero() {
			t.Errorf("%s: the Lease was renewed (%s -> %s)", what, before, after)
		}
	}
	renews("the agent to renew through the proxy")

	t.Run("partition", func(t *testing.T) {
		proxy.Partition()
		noRenewal("partitioned", 2500*time.Millisecond)
		proxy.Heal()
		renews("the agent to renew after the partition healed")
	})

	t.Run("pause", func(t *testing.T) {
		agent.Pause()
		noRenewal("paused", 2500*time.Millisecond)
		agent.Resume()
		renews("the agent to renew after SIGCONT")
	})

	t.Run("apiserver restart", func(t *testing.T) {
		b := farm.MakeBuild("before", ns, drvs.Add(t, "before", "x86_64-linux", 1)).Obj()
		if err := env.Client.Create(ctx, b); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		env.StopAPIServer(t)
		stopped := time.Since(start)
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(b), &farmv1.Build{}); err == nil {
			t.Errorf("the apiserver answers while stopped")
		}
		start = time.Now()
		env.StartAPIServer(t)
		t.Logf("apiserver stopped in %s, started in %s", stopped.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(b), &farmv1.Build{}); err != nil {
			t.Errorf("the same client after the restart: %v", err)
		}
		renews("the agent to renew after the apiserver restart")
		waitFor(t, 30*time.Second, "the Build created before the restart to succeed", func() (bool, string) {
			got := &farmv1.Build{}
			_ = env.Client.Get(ctx, client.ObjectKeyFromObject(b), got)
			return got.Status.Phase == farmv1.BuildSucceeded, rbState(got)
		})
	})

	t.Run("controller restart", func(t *testing.T) {
		ctrl.Stop()
		b := farm.MakeBuild("while-down", ns, drvs.Add(t, "while-down", "x86_64-linux", 2)).Obj()
		if err := env.Client.Create(ctx, b); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if got := (&farmv1.Build{}); env.Client.Get(ctx, client.ObjectKeyFromObject(b), got) == nil && got.Status.Phase != "" && got.Status.Phase != farmv1.BuildPending {
			t.Errorf("a Build progressed with the controller stopped: %s", rbState(got))
		}
		ctrl.Start()
		waitFor(t, 30*time.Second, "the Build to succeed once the controller is back", func() (bool, string) {
			got := &farmv1.Build{}
			_ = env.Client.Get(ctx, client.ObjectKeyFromObject(b), got)
			return got.Status.Phase == farmv1.BuildSucceeded, rbState(got)
		})
	})

	t.Run("agent kill and restart", func(t *testing.T) {
		agent.Kill()
		if !agent.Exited() {
			t.Fatal("killed agent still runs")
		}
		agent = agent.Restart(t)
		renews("the restarted agent to renew its Lease")
	})

	t.Run("minio restart", func(t *testing.T) {
		m := testbed.StartMinIO(t)
		m.MakeBucket(t, "kept")
		m.Stop()
		if _, err := http.Get(m.URL + "/minio/health/ready"); err == nil {
			t.Errorf("minio answers while stopped")
		}
		m.Start(t)
		if ok, err := m.Client.BucketExists(ctx, "kept"); err != nil || !ok {
			t.Errorf("bucket after the restart: %v %v", ok, err)
		}
	})
}
