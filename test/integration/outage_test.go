package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/test/farm"
)

// outageDAG is outageBuilds independent real derivations, each sleeping long enough to be running
// when the apiserver stops, and finishing while it is down.
const outageDAG = `{ bb, nonce }:
let
  busybox = builtins.storePath bb;
  mk = i: derivation {
    name = "outage-${toString i}";
    inherit nonce;
    system = builtins.currentSystem;
    builder = "${busybox}/bin/busybox";
    # The last 4 (through the bucket's outage) sleep longer: they must all be running at once
    # when MinIO stops, however staggered their starts on a loaded machine.
    args = [ "sh" "-c" "echo token-outage-${nonce}; ${busybox}/bin/busybox sleep ${if i >= 20 then "60" else "15"}; echo ${toString i} > $out" ];
  };
in builtins.listToAttrs (builtins.genList (i: { name = "o${toString i}"; value = mk i; }) 24)
`

const (
	outageBuilds       = 20 // through the apiserver's outage; 4 more through the bucket's
	outageBucketBuilds = 4
	outageLength       = 60 * time.Second
	bucketOutage       = 20 * time.Second
)

// TestAPIServerOutage: the apiserver stops for 60 s (ten Lease terms) while 20 real builds run on
// two agents, and they all finish while it is down. No attempt is lost: agents keep building and
// hold their results, the controller does not count the time it could not see against them, and
// once the apiserver is back every Build Succeeds in its first attempt, spending no retry. Then
// MinIO stops for 20 s while 4 more build: their publication is held, not failed, and they too
// Succeed in their first attempt once it is back.
func TestAPIServerOutage(t *testing.T) {
	f := startRealFarm(t)
	file := filepath.Join(f.submit.Root, "outage.nix")
	if err := os.WriteFile(file, []byte(outageDAG), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"nix-instantiate", file, "--argstr", "bb", f.bb, "--argstr", "nonce", f.nonce}
	var attrs []string
	for i := range outageBuilds + outageBucketBuilds {
		attrs = append(attrs, fmt.Sprintf("o%d", i))
		args = append(args, "-A", attrs[i])
	}
	out := strings.Fields(f.submit.MustRun(t, args...))
	if len(out) != len(attrs) {
		t.Fatalf("nix-instantiate gave %d paths for %d attributes", len(out), len(attrs))
	}
	for i, a := range attrs {
		f.addBuild(t, a, out[i])
	}
	attrs, later := attrs[:outageBuilds], attrs[outageBuilds:]
	f.submitBuilds(t, nil, attrs...) // also publishes busybox, which the agents' daemons substitute first
	// Slots for every build on each agent: the Builds are planned before the agents start, and
	// the first agent whose Lease the planner sees may hold them all in its horizon.
	f.startAgentsWith(t, func(s *farm.DaemonAgentSpec) { s.Slots = outageBuilds })
	running := func(n int) {
		waitFor(t, 2*time.Minute, "every build to be running", func() (bool, string) {
			p := phases(listBuilds(t, f.ns))
			return p[farmv1.BuildRunning] == n, fmt.Sprint(p)
		})
	}
	running(outageBuilds)

	stoppedAt := time.Now()
	env.StopAPIServer(t)
	time.Sleep(outageLength)
	env.StartAPIServer(t)
	t.Logf("apiserver down for %s", time.Since(stoppedAt).Round(100*time.Millisecond))
	if builderRunning("token-outage-" + f.nonce) {
		t.Errorf("builders still run after the outage: the builds did not finish while the apiserver was down")
	}

	f.waitSucceeded(t, 2*time.Minute, attrs...)
	t.Logf("every build Succeeded %s after the apiserver returned", time.Since(stoppedAt.Add(outageLength)).Round(100*time.Millisecond))

	f.submitBuilds(t, nil, later...)
	// Their builders running: past the substitution of their .drv files, so what the outage meets
	// is their publication.
	waitFor(t, 2*time.Minute, "the builders to run", func() (bool, string) {
		n := builderCount("token-outage-" + f.nonce)
		return n == len(later), fmt.Sprintf("%d running", n)
	})
	f.minio.Stop()
	time.Sleep(bucketOutage)
	f.minio.Start(t)
	back := time.Now()
	f.waitSucceeded(t, 2*time.Minute, later...)
	t.Logf("MinIO down for %s; the held builds Succeeded %s after it returned", bucketOutage, time.Since(back).Round(100*time.Millisecond))

	for _, a := range append(attrs, later...) {
		b := f.byAttr(t, a)
		if b.Status.AttemptCount != 1 || b.Status.LostAttempts != 0 || len(b.Status.Attempts) != 1 {
			t.Errorf("%s: %d attempts, %d lost, history %+v; want the one attempt that ran through the outage",
				b.Name, b.Status.AttemptCount, b.Status.LostAttempts, b.Status.Attempts)
		}
		f.checkOutputs(t, a)
	}
	f.checkBucket(t, outageBuilds+outageBucketBuilds)
}
