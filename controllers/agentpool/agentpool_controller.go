// Package agentpool reconciles AgentPools. It tells the planner what each pool could serve (so a
// Build for a system no pool serves waits with a clear condition), runs the pool's agents as the
// pods of a StatefulSet (agent plus daemon sidecar, placed by architecture, isolated by the pool's
// profile), sizes the pool from its queue when autoscaling is on, drains agents before removing
// or replacing them, and reports the pool's pods, agents, running builds and queue.
package agentpool

import (
	"context"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers/planloop"
	"github.com/guixfarm/guix-farm/internal/agentlease"
	"github.com/guixfarm/guix-farm/internal/autoscale"
	"github.com/guixfarm/guix-farm/internal/conditions"
	"github.com/guixfarm/guix-farm/internal/planner"
)

// StatusInterval refreshes the queue depth, which changes without any pool or Lease event.
const StatusInterval = 15 * time.Second

// busyRecheck is how soon a pool with agents draining or rolling is looked at again: a drained
// agent's last build ending moves no pod and no pool.
const busyRecheck = 2 * time.Second

// Reconciler reconciles AgentPools.
type Reconciler struct {
	Client client.Client
	Loop   *planloop.Loop
	Clock  clock.Clock
	// Defaults make the agent pods; with no AgentImage the controller makes no pods and the pools
	// report on agents started elsewhere (processes, or pods of your own).
	Defaults Defaults
	Recorder events.EventRecorder
	// Loading, when set, hears of each pool's first reconcile: Builds are judged once every pool
	// is known.
	Loading *planloop.Loading

	mu          sync.Mutex
	recommender map[types.NamespacedName]*autoscale.Recommender
	planned     chan event.TypedGenericEvent[*farmv1.AgentPool]
}

var _ reconcile.Reconciler = (*Reconciler)(nil)

// managesPods says whether this controller runs the pools' agents as pods.
func (r *Reconciler) managesPods() bool { return r.Defaults.AgentImage != "" }

// SetupWithManager watches pools, their agents' Leases, and (when it makes pods) their
// StatefulSets, pods, budgets and daemon ConfigMaps; after each planning pass, the pools that
// autoscale look at their queue again.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.planned = make(chan event.TypedGenericEvent[*farmv1.AgentPool], 1)
	prev := r.Loop.AfterPlan
	r.Loop.AfterPlan = func() {
		if prev != nil {
			prev()
		}
		select { // one pending wake-up is enough: it re-reads every pool
		case r.planned <- event.TypedGenericEvent[*farmv1.AgentPool]{Object: &farmv1.AgentPool{}}:
		default:
		}
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("agentpool").
		For(&farmv1.AgentPool{}).
		Watches(&coordinationv1.Lease{}, handler.EnqueueRequestsFromMapFunc(poolOfLabel)).
		WatchesRawSource(source.Channel(r.planned, handler.TypedEnqueueRequestsFromMapFunc(r.autoscaledPools)))
	if r.managesPods() {
		b = b.Owns(&appsv1.StatefulSet{}).
			Owns(&policyv1.PodDisruptionBudget{}).
			Owns(&corev1.ConfigMap{}).
			Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(poolOfLabel))
	}
	return b.Complete(r)
}

// poolOfLabel maps an agent's Lease or pod to its pool.
func poolOfLabel(_ context.Context, o client.Object) []reconcile.Request {
	pool := o.GetLabels()[agentlease.LabelPool]
	if pool == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: pool}}}
}

// autoscaledPools lists the pools whose size follows the queue.
func (r *Reconciler) autoscaledPools(ctx context.Context, _ *farmv1.AgentPool) []reconcile.Request {
	var pools farmv1.AgentPoolList
	if err := r.Client.List(ctx, &pools); err != nil {
		return nil
	}
	var out []reconcile.Request
	for i := range pools.Items {
		if a := pools.Items[i].Spec.Autoscaling; a != nil && a.Enabled {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&pools.Items[i])})
		}
	}
	return out
}

// Reconcile sizes one pool, moves its pods one step towards that size and template, and writes
// its status once.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	defer r.Loading.CapabilitySeen(planloop.CapabilityKey("pool", req.NamespacedName))
	p := r.Loop.Planner()
	pool := &farmv1.AgentPool{}
	if err := r.Client.Get(ctx, req.NamespacedName, pool); err != nil {
		if apierrors.IsNotFound(err) {
			p.RemovePool(poolKey(req.NamespacedName))
			r.forgetRecommender(req.NamespacedName)
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
	agents := map[string]agentlease.Info{}
	st.ReadyAgents, st.RunningBuilds = 0, 0
	for i := range leases.Items {
		info, err := agentlease.Parse(&leases.Items[i])
		if err != nil || now.After(info.Expires) {
			continue
		}
		agents[info.Name] = info
		st.ReadyAgents++
		st.RunningBuilds += int32(info.Slots - info.FreeSlots)
	}
	stats := p.Stats()
	st.QueueDepth = 0
	for _, sys := range pool.Spec.Systems {
		st.QueueDepth += int32(stats.Pending[sys])
	}
	st.ClaimableBuilds = int32(p.Claimable(poolKey(req.NamespacedName)))
	st.Selector = metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: Selector(pool.Name)})
	st.ObservedGeneration = pool.Generation
	st.Isolation = pool.Spec.Isolation
	if st.Isolation == "" {
		st.Isolation = farmv1.IsolationPrivileged
	}

	desired, scaled, err := r.size(ctx, pool, int(st.ClaimableBuilds), int(st.RunningBuilds), now)
	if err != nil {
		return ctrl.Result{}, err
	}
	st.DesiredReplicas = desired
	if scaled {
		st.LastScaleTime = &metav1.Time{Time: now}
	}

	requeue := StatusInterval
	if !r.managesPods() {
		st.Replicas = st.ReadyAgents
	} else {
		busy, err := r.runPods(ctx, pool, desired, agents, now)
		if err != nil {
			return ctrl.Result{}, err
		}
		if busy {
			requeue = busyRecheck
		}
	}

	want := int32(1)
	if pool.Spec.MinReplicas != nil {
		want = max(*pool.Spec.MinReplicas, 1)
	}
	if desired == 0 && pool.Spec.Autoscaling != nil && pool.Spec.Autoscaling.Enabled {
		want = 0 // scaled to zero on purpose: not a missing agent
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
	if scaled && r.Recorder != nil {
		r.Recorder.Eventf(pool, nil, corev1.EventTypeNormal, "Scaled", "Autoscale", "spec.replicas %d → %d: %s",
			ptrOr(before.Spec.Replicas, 1), desired, scalingMessage(st.Conditions))
	}
	log.V(1).Info("Pool reconciled", "desired", desired, "pods", st.Replicas, "ready", st.ReadyAgents, "claimable", st.ClaimableBuilds)
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// size returns the pool's desired size. With autoscaling on, it is the recommender's, written to
// spec.replicas (scaled says it changed); otherwise spec.replicas is the user's or an HPA's.
func (r *Reconciler) size(ctx context.Context, pool *farmv1.AgentPool, claimable, running int, now time.Time) (int32, bool, error) {
	cur := ptrOr(pool.Spec.Replicas, 1)
	a := pool.Spec.Autoscaling
	if a == nil || !a.Enabled {
		r.forgetRecommender(client.ObjectKeyFromObject(pool))
		conditions.Set(&pool.Status.Conditions, pool.Generation, now, farmv1.AgentPoolConditionScaling, metav1.ConditionFalse, "Manual",
			fmt.Sprintf("spec.replicas (%d) is set by kubectl scale or an HPA: spec.autoscaling.enabled is false", cur))
		return cur, false, nil
	}
	pol := autoscale.Policy{
		Min:           ptrOr(pool.Spec.MinReplicas, 0),
		Max:           ptrOr(pool.Spec.MaxReplicas, autoscale.DefaultMax),
		SlotsPerAgent: max(pool.Spec.MaxParallelBuilds, 1),
		Window:        time.Duration(a.StabilizationWindowSeconds) * time.Second,
	}
	want, why := r.recommenderOf(client.ObjectKeyFromObject(pool), now, cur).Recommend(now, claimable, running, pol)
	conditions.Set(&pool.Status.Conditions, pool.Generation, now, farmv1.AgentPoolConditionScaling, metav1.ConditionTrue, "Autoscaling",
		fmt.Sprintf("%d agents for %d claimable and %d running builds: %s", want, claimable, running, why))
	if want == cur {
		return cur, false, nil
	}
	patch := client.MergeFrom(pool.DeepCopy())
	spec := pool.DeepCopy()
	spec.Spec.Replicas = &want
	if err := r.Client.Patch(ctx, spec, patch); err != nil {
		return cur, false, fmt.Errorf("writing spec.replicas %d of pool %s: %w", want, pool.Name, err)
	}
	// Keep the status patch based on the object as it is now.
	pool.ResourceVersion, pool.Generation, pool.Spec.Replicas = spec.ResourceVersion, spec.Generation, &want
	return want, true, nil
}

// recommenderOf is the pool's recommender; a new one starts its window from the pool's current
// size, so a controller restart does not shrink a pool at once.
func (r *Reconciler) recommenderOf(k types.NamespacedName, now time.Time, size int32) *autoscale.Recommender {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.recommender == nil {
		r.recommender = map[types.NamespacedName]*autoscale.Recommender{}
	}
	rec := r.recommender[k]
	if rec == nil {
		rec = autoscale.NewRecommender(now, size)
		r.recommender[k] = rec
	}
	return rec
}

func (r *Reconciler) forgetRecommender(k types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.recommender, k)
}

// runPods makes the pool's pods follow desired and the current template: it writes the daemon's
// ConfigMap, the StatefulSet and the budget, drains agents and deletes drained ones, and fills
// the pod counts of the status. busy says a drain or a roll is under way.
func (r *Reconciler) runPods(ctx context.Context, pool *farmv1.AgentPool, desired int32, agents map[string]agentlease.Info, now time.Time) (bool, error) {
	st := &pool.Status
	tpl, ferr := PodTemplate(pool, r.Defaults)
	if ferr != nil {
		conditions.Set(&st.Conditions, pool.Generation, now, farmv1.AgentPoolConditionTemplateValid, metav1.ConditionFalse, "InvalidTemplate", ferr.Error())
		return false, nil
	}
	if err := r.ensureDaemonConfig(ctx, pool); err != nil {
		return false, err
	}
	sts := &appsv1.StatefulSet{}
	err := r.Client.Get(ctx, client.ObjectKey{Namespace: pool.Namespace, Name: pool.Name}, sts)
	if apierrors.IsNotFound(err) {
		sts = r.statefulSet(pool, tpl, desired)
		if err := r.Client.Create(ctx, sts); err != nil {
			if msg, ok := invalid(err); ok {
				conditions.Set(&st.Conditions, pool.Generation, now, farmv1.AgentPoolConditionTemplateValid, metav1.ConditionFalse, "InvalidTemplate", msg)
				return false, nil
			}
			return false, fmt.Errorf("creating the StatefulSet of pool %s: %w", pool.Name, err)
		}
	} else if err != nil {
		return false, err
	}
	if !metav1.IsControlledBy(sts, pool) {
		conditions.Set(&st.Conditions, pool.Generation, now, farmv1.AgentPoolConditionTemplateValid, metav1.ConditionFalse, "StatefulSetNotOwned",
			fmt.Sprintf("StatefulSet %s exists and is not this pool's: delete or rename it", pool.Name))
		return false, nil
	}
	if err := r.ensureBudget(ctx, pool); err != nil {
		return false, err
	}

	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(pool.Namespace), client.MatchingLabels(Selector(pool.Name))); err != nil {
		return false, fmt.Errorf("listing pods of pool %s: %w", pool.Name, err)
	}
	members, err := r.members(ctx, pool, sts, pods.Items, agents)
	if err != nil {
		return false, err
	}
	grace := time.Duration(60) * time.Second
	if a := pool.Spec.Autoscaling; a != nil {
		grace = time.Duration(a.IdleGraceSeconds) * time.Second
	}
	cur := ptrOr(sts.Spec.Replicas, 0)
	step := nextStep(stepInput{Replicas: cur, Desired: desired, Members: members, Now: now, IdleGrace: grace})

	if err := r.applyDrains(ctx, pool, members, step.Drain); err != nil {
		return false, err
	}
	for _, name := range step.Delete {
		if err := r.deletePod(ctx, pool.Namespace, name, pods.Items); err != nil {
			return false, err
		}
	}
	hash := templateHash(tpl)
	if step.Replicas != cur || sts.Annotations[annotationTemplateHash] != hash {
		patch := client.MergeFrom(sts.DeepCopy())
		sts.Spec.Replicas = &step.Replicas
		sts.Spec.Template = tpl
		if sts.Annotations == nil {
			sts.Annotations = map[string]string{}
		}
		sts.Annotations[annotationTemplateHash] = hash
		if err := r.Client.Patch(ctx, sts, patch); err != nil {
			if msg, ok := invalid(err); ok {
				conditions.Set(&st.Conditions, pool.Generation, now, farmv1.AgentPoolConditionTemplateValid, metav1.ConditionFalse, "InvalidTemplate", msg)
				return false, nil
			}
			return false, fmt.Errorf("updating the StatefulSet of pool %s: %w", pool.Name, err)
		}
	}
	conditions.Set(&st.Conditions, pool.Generation, now, farmv1.AgentPoolConditionTemplateValid, metav1.ConditionTrue, "TemplateValid",
		"the agent pods are made from this pool's spec")

	st.Replicas, st.UpdatedReplicas = 0, 0
	for _, m := range members {
		if m.Failed {
			continue
		}
		st.Replicas++
		if m.Current {
			st.UpdatedReplicas++
		}
	}
	st.DrainingAgents = int32(len(step.Drain))
	rolling := st.UpdatedReplicas < st.Replicas
	if rolling {
		conditions.Set(&st.Conditions, pool.Generation, now, farmv1.AgentPoolConditionRolledOut, metav1.ConditionFalse, "Rolling",
			fmt.Sprintf("%d of %d agents run the current template; the others are drained and replaced one at a time", st.UpdatedReplicas, st.Replicas))
	} else {
		conditions.Set(&st.Conditions, pool.Generation, now, farmv1.AgentPoolConditionRolledOut, metav1.ConditionTrue, "RolledOut",
			fmt.Sprintf("all %d agents run the current template", st.Replicas))
	}
	return len(step.Drain) > 0 || rolling || step.Replicas != desired, nil
}

func ptrOr(p *int32, def int32) int32 {
	if p == nil {
		return def
	}
	return *p
}

// poolKey names a pool in the planner; pools of different namespaces are different pools.
func poolKey(n types.NamespacedName) string { return n.Namespace + "/" + n.Name }

func scalingMessage(conds []metav1.Condition) string {
	if c := meta.FindStatusCondition(conds, farmv1.AgentPoolConditionScaling); c != nil {
		return c.Message
	}
	return ""
}
