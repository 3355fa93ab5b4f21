package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers/agentpool"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/test/farm"
)

// BenchmarkAutoscaleFirstScale: 50 Builds queued for an autoscaled pool at zero (max 25 agents
// of 2 slots); how long from the first Build's creation until the controller has written the
// desired size (25) to spec.replicas, against the baseline of how long until the controller knew
// every Build's system (its planner counted them all), the earliest any scaler could know the queue. It
// also counts the writes of spec.replicas on the way (a scaler that follows the queue as it fills
// writes more than one).
func BenchmarkAutoscaleFirstScale(b *testing.B) {
	ctx := context.Background()
	for i := range b.N {
		ns := env.Namespace(b, "scale")
		drvs := farm.NewDrvs(b)
		f := env.StartController(b, ns, drvs.Dir, farm.ControllerOptions{Strategy: planner.Basic, AgentPods: agentpool.Defaults{
			AgentImage: "guix-farm-agent:bench", DaemonImage: "guix-farm-test-daemon:bench", SystemArch: agentpool.DefaultSystemArch()}})
		pool := &farmv1.AgentPool{ObjectMeta: metav1.ObjectMeta{Name: "arm", Namespace: ns}, Spec: farmv1.AgentPoolSpec{
			Systems: []string{"aarch64-linux"}, MaxParallelBuilds: 2, Replicas: ptr.To[int32](0), MinReplicas: ptr.To[int32](0),
			MaxReplicas: ptr.To[int32](25), Autoscaling: &farmv1.Autoscaling{Enabled: true, StabilizationWindowSeconds: 300, IdleGraceSeconds: 60}}}
		if err := env.Client.Create(ctx, pool); err != nil {
			b.Fatal(err)
		}
		paths := make([]string, 50)
		for j := range paths {
			paths[j] = drvs.Add(b, fmt.Sprintf("s%d-%02d", i, j), "aarch64-linux", j)
		}
		b.StartTimer()
		start := time.Now()
		for j, p := range paths {
			if err := env.Client.Create(ctx, farm.MakeBuild(fmt.Sprintf("s%02d", j), ns, p).Obj()); err != nil {
				b.Fatal(err)
			}
		}
		var factsAt, scaledAt time.Duration
		writes, last := 0, int32(0)
		for deadline := time.Now().Add(time.Minute); (factsAt == 0 || scaledAt == 0) && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if factsAt == 0 && f.Loop.Planner().Stats().Pending["aarch64-linux"] == len(paths) {
				factsAt = time.Since(start)
			}
			if r := ptr.Deref(getPool(b, pool).Spec.Replicas, 0); r != last {
				writes++
				last = r
				if r == 25 && scaledAt == 0 {
					scaledAt = time.Since(start)
				}
			}
		}
		b.StopTimer()
		if factsAt == 0 || scaledAt == 0 {
			b.Fatalf("after a minute: facts at %s, desired size written at %s (size %d)", factsAt, scaledAt, last)
		}
		b.ReportMetric(scaledAt.Seconds(), "scale-s")
		b.ReportMetric(factsAt.Seconds(), "facts-s")
		b.ReportMetric(float64(writes), "size-writes")
	}
}
