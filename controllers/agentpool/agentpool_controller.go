// Package agentpool reconciles AgentPools: it tells the planner what each pool could serve (so a
// Build for a system no pool serves waits with a clear condition) and reports the pool's agents,
// running builds and queue depth. The pod template's reconciler comes with the pool issue.
package agentpool

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers/planning"
	"github.com/guixfarm/guix-farm/internal/agentlease"
	"github.com/guixfarm/guix-farm/internal/conditions"
	"github.com/guixfarm/guix-farm/internal/planner"
)

// StatusInterval refreshes the queue depth, which changes without any pool or Lease event.
const StatusInterval = 15 * time.Second

// Reconciler reconciles AgentPools.
type Reconciler struct {
	Client client.Client
	Loop   *planning.Loop
	Clock  clock.Clock
}

var _ reconcile.Reconciler = (*Reconciler)(nil)

// SetupWithManager watches pools and their agents' Leases.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("agentpool").
		For(&farmv1.AgentPool{}).
		Watches(&coordinationv1.Lease{}, handler.EnqueueRequestsFromMapFunc(poolOfLease)).
		Complete(r)
}

func poolOfLease(_ context.Context, o client.Object) []reconcile.Request {
	pool := o.GetLabels()[agentlease.LabelPool]
	if pool == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: pool}}}
}

// Reconcile updates one pool's status.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	p := r.Loop.Planner()
	pool := &farmv1.AgentPool{}
	if err := r.Client.Get(ctx, req.NamespacedName, pool); err != nil {
		if apierrors.IsNotFound(err) {
			p.RemovePool(poolKey(req.NamespacedName))
			r.Loop.Kick()
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	p.UpsertPool(planner.Pool{Name: poolKey(req.NamespacedName), Systems: pool.Spec.Systems, Features: pool.Spec.Features})
	r.Loop.Kick()

	var leases coordinationv1.LeaseList
	if err := r.Client.List(ctx, &leases, client.InNamespace(pool.Namespace),
		client.MatchingLabels{agentlease.LabelAgent: "true", agentlease.LabelPool: pool.Name}); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing agents of pool %s: %w", pool.Name, err)
	}
	now := r.Clock.Now()
	before := pool.DeepCopy()
	st := &pool.Status
	st.ReadyAgents, st.RunningBuilds = 0, 0
	for i := range leases.Items {
		info, err := agentlease.Parse(&leases.Items[i])
		if err != nil || now.After(info.Expires) {
			continue
		}
		st.ReadyAgents++
		st.RunningBuilds += int32(info.Slots - info.FreeSlots)
	}
	st.Replicas = st.ReadyAgents
	stats := p.Stats()
	st.QueueDepth = 0
	for _, sys := range pool.Spec.Systems {
		st.QueueDepth += int32(stats.Pending[sys])
	}
	st.Selector = metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: map[string]string{agentlease.LabelPool: pool.Name}})
	st.ObservedGeneration = pool.Generation
	want := int32(1)
	if pool.Spec.MinReplicas != nil {
		want = max(*pool.Spec.MinReplicas, 1)
	}
	if st.ReadyAgents >= want {
		conditions.Set(&st.Conditions, pool.Generation, now, farmv1.AgentPoolConditionReady, metav1.ConditionTrue, "AgentsReady",
			fmt.Sprintf("%d agents ready", st.ReadyAgents))
	} else {
		conditions.Set(&st.Conditions, pool.Generation, now, farmv1.AgentPoolConditionReady, metav1.ConditionFalse, "AgentsMissing",
			fmt.Sprintf("%d of at least %d agents ready", st.ReadyAgents, want))
	}
	if err := r.Client.Status().Patch(ctx, pool, client.MergeFrom(before)); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	return ctrl.Result{RequeueAfter: StatusInterval}, nil
}

// poolKey names a pool in the planner; pools of different namespaces are different pools.
func poolKey(n types.NamespacedName) string { return n.Namespace + "/" + n.Name }
