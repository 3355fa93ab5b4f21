package agent

import (
	"context"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/guixfarm/guix-farm/internal/agentlease"
)

// minLeaseUpdate spaces the Lease writes that report changed free slots.
const minLeaseUpdate = time.Second

// holdLease renews the Lease until ctx ends. A renewal that fails does not stop the agent: through
// an apiserver outage it keeps building what it owns and reports when the apiserver returns (the
// controller does not count the time it could not see against the agent). Past a whole term
// without renewal it claims nothing new (free), and a Lease found deleted or replaced ends the
// term: its attempts are fenced (renewLease).
func (a *Agent) holdLease(ctx context.Context) {
	lastOK := a.clock.Now()
	lapsedLogged := false
	t := a.clock.NewTicker(a.cfg.RenewInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		case <-a.leaseKick():
			// Slots changed: tell the planner soon, but coalesce a burst of claims into one write.
			if d := a.clock.Since(lastOK); d < minLeaseUpdate {
				select {
				case <-ctx.Done():
					return
				case <-a.clock.After(minLeaseUpdate - d):
				}
			}
		}
		err := a.renewLease(ctx)
		if apierrors.IsConflict(err) {
			// The controller annotated the Lease (a drain) between our read and write: read again.
			err = a.renewLease(ctx)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Error(err, "Renewing lease")
			if a.lapsed() && !lapsedLogged {
				lapsedLogged = true
				a.log.Info("Lease not renewed for a whole term: claiming nothing until it is; running builds go on",
					"term", a.cfg.LeaseDuration, "running", a.inflightCount())
			}
			continue
		}
		lastOK = a.clock.Now()
		lapsedLogged = false
	}
}

func (a *Agent) leaseKick() <-chan struct{} { return a.leaseWake }

func (a *Agent) kickLease() {
	select {
	case a.leaseWake <- struct{}{}:
	default:
	}
}

// renewLease creates or renews the agent's Lease with its current free slots. The Lease's UID is
// the agent's term: a Lease found deleted (the controller declared the agent lost) or replaced
// ends the term, and the attempts claimed in it are fenced before a new term begins.
func (a *Agent) renewLease(ctx context.Context) error {
	key := client.ObjectKey{Namespace: a.cfg.Namespace, Name: a.cfg.Name}
	l := &coordinationv1.Lease{}
	err := a.client.Get(ctx, key, l)
	switch {
	case apierrors.IsNotFound(err):
		l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: a.cfg.Name, Namespace: a.cfg.Namespace}}
		a.endTerm("its Lease was deleted")
		agentlease.Apply(l, a.leaseInfo(), a.clock.Now(), a.cfg.LeaseDuration)
		if err := a.client.Create(ctx, l); err != nil {
			return err
		}
	case err != nil:
		return err
	default:
		if a.currentTerm() != l.UID {
			a.endTerm("its Lease was replaced")
		}
		agentlease.Apply(l, a.leaseInfo(), a.clock.Now(), a.cfg.LeaseDuration)
		if err := a.client.Update(ctx, l); err != nil {
			return err
		}
	}
	wasLapsed := a.lapsed()
	a.lastRenewal.Store(a.clock.Now().UnixNano())
	if wasLapsed {
		a.kick() // slots are offered again
	}
	if a.currentTerm() != l.UID {
		a.fenceTerm("", l.UID) // a new term begins; the old one was fenced above
		a.log.Info("Lease term begins", "lease", l.UID)
		a.kick()
	}
	return nil
}

func (a *Agent) leaseInfo() agentlease.Info {
	return agentlease.Info{Name: a.cfg.Name, Pool: a.cfg.Pool, Systems: a.cfg.Systems, Features: a.cfg.Features,
		Slots: a.cfg.Slots, FreeSlots: a.free(), Unhealthy: a.unhealthyReason()}
}

func (a *Agent) currentTerm() types.UID {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.term
}

func (a *Agent) inflightCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.running)
}

// endTerm fences the attempts of the current term, if any, before a new Lease is made or taken:
// once the controller has declared the agent lost it may have given them to other agents.
func (a *Agent) endTerm(why string) {
	old := a.currentTerm()
	if old == "" {
		return // the first Lease of this process: nothing was claimed yet
	}
	a.fenceTerm(old, "")
	a.log.Info("Lease term ended; stopping its attempts without reporting them", "why", why, "lease", old)
}

// wakeHandler turns informer events into a wake-up of the claim loop.
type wakeHandler struct{ kick func() }

func (h wakeHandler) OnAdd(any, bool)   { h.kick() }
func (h wakeHandler) OnUpdate(any, any) { h.kick() }
func (h wakeHandler) OnDelete(any)      { h.kick() }
