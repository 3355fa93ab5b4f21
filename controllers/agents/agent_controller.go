// Package agents watches the agents' Leases: a live Lease registers the agent with the planner;
// an expired one is a lost agent, whose attempts in flight fail with reason AgentLost (and are
// retried) and whose allocations the planner withdraws.
package agents

import (
	"context"
	"fmt"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers/planloop"
	"github.com/guixfarm/guix-farm/internal/agentlease"
	"github.com/guixfarm/guix-farm/internal/index"
	"github.com/guixfarm/guix-farm/internal/lifecycle"
	"github.com/guixfarm/guix-farm/internal/metrics"
	"github.com/guixfarm/guix-farm/internal/planner"
)

// Reconciler reconciles agent Leases.
type Reconciler struct {
	Client client.Client
	// APIReader reads Builds fresh when ending their attempts, to avoid conflicts on a stale cache.
	APIReader client.Reader
	Loop      *planloop.Loop
	Clock     clock.Clock
	Metrics   *metrics.Metrics
	// Grace is added to a Lease's expiry before the agent is declared lost (clock skew).
	Grace time.Duration
	// Recorder, when set, says on a malformed Lease why it is ignored.
	Recorder events.EventRecorder
	// View, when set, pauses agents' terms while this controller cannot see the apiserver.
	View *View
	// Namespace, when set, is the farm's namespace: agent Leases elsewhere are not agents.
	Namespace string
	// Loading, when set, hears of each Lease's first reconcile: Builds are judged once every
	// agent is known.
	Loading *planloop.Loading

	// seen is, per agent Lease, the last renewal observed and when this controller observed it:
	// expiry is judged on the controller's own clock from that moment, never on the agent's
	// clock (which may be skewed) nor on a cached copy alone.
	mu   sync.Mutex
	seen map[types.NamespacedName]renewal
}

// renewal is one observed renewal of a Lease.
type renewal struct {
	renewTime time.Time // as the agent wrote it
	at        time.Time // when this controller first saw it
}

// observe records the renewal l shows, now if it is new, and returns when it was first seen.
func (r *Reconciler) observe(n types.NamespacedName, renewTime, now time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = map[types.NamespacedName]renewal{}
	}
	if old, ok := r.seen[n]; ok && old.renewTime.Equal(renewTime) {
		return old.at
	}
	r.seen[n] = renewal{renewTime: renewTime, at: now}
	return now
}

func (r *Reconciler) forget(n types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.seen, n)
}

var _ reconcile.Reconciler = (*Reconciler)(nil)

// SetupWithManager watches the Leases labelled as agents'.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	isAgent, err := predicate.LabelSelectorPredicate(metav1LabelSelector())
	if err != nil {
		return err
	}
	inFarm := predicate.NewPredicateFuncs(func(o client.Object) bool {
		return r.Namespace == "" || o.GetNamespace() == r.Namespace
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("agent").
		For(&coordinationv1.Lease{}, builder.WithPredicates(isAgent, inFarm)).
		// A Build's attempt names its agent: the agent is looked at even when its Lease vanished
		// while the controller was down (no Lease event will ever come for it), so no attempt
		// stays Running for ever on an agent nobody knows.
		Watches(&farmv1.Build{}, handler.EnqueueRequestsFromMapFunc(attemptAgent), builder.WithPredicates(inFarm)).
		Complete(r)
}

// attemptAgent maps a Build with an attempt in flight to its agent's Lease.
func attemptAgent(_ context.Context, o client.Object) []reconcile.Request {
	b, ok := o.(*farmv1.Build)
	if !ok || b.Status.Attempt == nil || b.Status.Attempt.Agent == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: b.Namespace, Name: b.Status.Attempt.Agent}}}
}

// Reconcile registers a live agent or handles a lost one.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx).WithValues("agent", req.Name)
	defer r.Loading.CapabilitySeen(planloop.CapabilityKey("lease", req.NamespacedName))
	p := r.Loop.Planner()
	l := &coordinationv1.Lease{}
	err := r.Client.Get(ctx, req.NamespacedName, l)
	if apierrors.IsNotFound(err) {
		// The cache may only lag behind a new agent's Lease (its claim can reach us first): ask
		// the apiserver before declaring anything lost.
		fresh := &coordinationv1.Lease{}
		if ferr := r.APIReader.Get(ctx, req.NamespacedName, fresh); ferr == nil {
			return ctrl.Result{RequeueAfter: time.Second}, nil
		} else if !apierrors.IsNotFound(ferr) {
			return ctrl.Result{}, fmt.Errorf("reading the Lease of agent %s: %w", req.Name, ferr)
		}
		// Deleted: an agent that shut down cleanly released its builds; any left are lost.
		r.forget(req.NamespacedName)
		p.RemoveAgent(req.Name)
		r.Loop.Kick()
		return ctrl.Result{}, r.failAttempts(ctx, req.Namespace, req.Name, "agent's Lease was deleted")
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	info, err := agentlease.Parse(l)
	if err != nil {
		// Ignored, not retried: a Lease is rewritten at every renewal, which brings it back.
		log.Error(err, "Ignoring malformed agent Lease")
		if r.Recorder != nil {
			r.Recorder.Eventf(l, nil, "Warning", "MalformedLease", "Ignore", "%s", err.Error())
		}
		return ctrl.Result{}, nil
	}
	now := r.Clock.Now()
	term := info.Expires.Sub(l.Spec.RenewTime.Time) // the Lease's duration
	seenAt := r.observe(req.NamespacedName, l.Spec.RenewTime.Time, now)
	start, canSee := r.View.termStart(seenAt)
	deadline := start.Add(term).Add(r.Grace)
	if !canSee {
		// The agent could not renew either: judge it once this controller sees again.
		deadline = now.Add(term)
	}
	if !now.Before(deadline) {
		// Expired as far as the cache shows: a renewal it has not delivered yet would prove
		// otherwise, so read the Lease afresh before declaring the agent lost.
		fresh := &coordinationv1.Lease{}
		if err := r.APIReader.Get(ctx, req.NamespacedName, fresh); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("reading the Lease of agent %s: %w", req.Name, err)
		} else if err == nil && fresh.Spec.RenewTime != nil && !fresh.Spec.RenewTime.Time.Equal(l.Spec.RenewTime.Time) {
			seenAt = r.observe(req.NamespacedName, fresh.Spec.RenewTime.Time, now)
			start, _ = r.View.termStart(seenAt)
			deadline = start.Add(term).Add(r.Grace)
		}
	}
	if now.Before(deadline) {
		slots := info.Slots
		if info.Unhealthy != "" || info.Drain != "" {
			// An unhealthy or draining agent claims nothing: a horizon on it would hold builds a
			// healthy agent could run, and a draining one must become idle to go.
			slots = 0
		}
		p.UpsertAgent(planner.Agent{Name: info.Name, Pool: info.Pool, Systems: info.Systems, Features: info.Features,
			Slots: slots, Running: max(0, slots-info.FreeSlots)})
		r.Loop.Kick()
		if err := r.endEarlierTerms(ctx, l); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{RequeueAfter: deadline.Sub(now) + 100*time.Millisecond}, nil
	}

	log.Info("Agent lost: lease expired", "lastRenewalSeen", seenAt, "term", term)
	r.forget(req.NamespacedName)
	r.Metrics.AgentsLost.Inc()
	p.RemoveAgent(req.Name)
	r.Loop.Kick()
	if err := r.failAttempts(ctx, req.Namespace, req.Name, fmt.Sprintf("agent's Lease not renewed for %s since %s (its term, plus %s grace)",
		now.Sub(seenAt).Round(time.Second), seenAt.UTC().Format(time.RFC3339), r.Grace)); err != nil {
		return ctrl.Result{}, err
	}
	// The resourceVersion precondition keeps a Lease the agent renewed meanwhile.
	rv := l.ResourceVersion
	if err := r.Client.Delete(ctx, l, client.Preconditions{ResourceVersion: &rv}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, nil
}

// endEarlierTerms ends, as lost, the attempts the agent of Lease l claimed under an earlier Lease:
// it was declared lost since (its Lease deleted) and has made a new one, so those attempts belong
// to nobody; the agent aborts them without reporting (it fences its old term). The cached Lease
// may be older than a claim made under the agent's newest Lease, so a fresh read decides.
func (r *Reconciler) endEarlierTerms(ctx context.Context, l *coordinationv1.Lease) error {
	var list farmv1.BuildList
	if err := r.Client.List(ctx, &list, client.InNamespace(l.Namespace), client.MatchingFields{index.BuildAttemptAgent: l.Name}); err != nil {
		return fmt.Errorf("listing builds of agent %s: %w", l.Name, err)
	}
	var current *coordinationv1.Lease
	for i := range list.Items {
		b := &list.Items[i]
		if !lifecycle.FromEarlierTerm(b, l.Name, l.UID) {
			continue
		}
		if current == nil {
			current = &coordinationv1.Lease{}
			if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(l), current); err != nil {
				return client.IgnoreNotFound(fmt.Errorf("reading the Lease of agent %s: %w", l.Name, err))
			}
		}
		if !lifecycle.FromEarlierTerm(b, l.Name, current.UID) {
			continue
		}
		if err := r.lose(ctx, client.ObjectKeyFromObject(b), l.Name, current.UID,
			"agent's Lease was deleted during the attempt (the agent was declared lost); the agent made a new one"); err != nil {
			return err
		}
	}
	return nil
}

// failAttempts ends the attempts agent had in flight as lost (AgentLost, lifecycle.Lose); each Build is
// retried (or ends Canceled if it was canceled meanwhile).
func (r *Reconciler) failAttempts(ctx context.Context, namespace, agent, why string) error {
	var list farmv1.BuildList
	// Agents are keyed by namespace and name: an agent of the same name elsewhere is another agent.
	if err := r.Client.List(ctx, &list, client.InNamespace(namespace), client.MatchingFields{index.BuildAttemptAgent: agent}); err != nil {
		return fmt.Errorf("listing builds of agent %s: %w", agent, err)
	}
	for i := range list.Items {
		if err := r.lose(ctx, client.ObjectKeyFromObject(&list.Items[i]), agent, "", why); err != nil {
			return err
		}
	}
	return nil
}

// lose ends the Build's attempt on agent as lost, on a fresh read. With keep set, an attempt
// claimed under the Lease of that UID is left alone (it is the agent's current term).
func (r *Reconciler) lose(ctx context.Context, key client.ObjectKey, agent string, keep types.UID, why string) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		b := &farmv1.Build{}
		if err := r.APIReader.Get(ctx, key, b); err != nil {
			return client.IgnoreNotFound(err)
		}
		if keep != "" && !lifecycle.FromEarlierTerm(b, agent, keep) {
			return nil
		}
		if err := lifecycle.Lose(b, agent, r.Clock.Now(), why); err != nil {
			return nil // no longer held by that agent
		}
		err := r.Client.Status().Update(ctx, b)
		if apierrors.IsConflict(err) {
			r.Metrics.Conflicts.WithLabelValues("agent-loss").Inc()
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("ending attempt of %s on lost agent %s: %w", key, agent, err)
	}
	return nil
}
