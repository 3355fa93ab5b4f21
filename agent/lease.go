package agent

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/guixfarm/guix-farm/internal/agentlease"
)

// minLeaseUpdate spaces the Lease writes that report changed free slots.
const minLeaseUpdate = time.Second

// holdLease renews the Lease until ctx ends. It returns an error once renewal has failed for a
// whole lease duration: the agent must then stop, as the controller treats it as lost.
func (a *Agent) holdLease(ctx context.Context) error {
	lastOK := a.clock.Now()
	t := a.clock.NewTicker(a.cfg.RenewInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		case <-a.leaseKick():
			// Slots changed: tell the planner soon, but coalesce a burst of claims into one write.
			if d := a.clock.Since(lastOK); d < minLeaseUpdate {
				select {
				case <-ctx.Done():
					return nil
				case <-a.clock.After(minLeaseUpdate - d):
				}
			}
		}
		if err := a.renewLease(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.log.Error(err, "Renewing lease")
			if a.clock.Since(lastOK) >= a.cfg.LeaseDuration {
				return fmt.Errorf("lease %s/%s not renewed for %s: %w", a.cfg.Namespace, a.cfg.Name, a.cfg.LeaseDuration, err)
			}
			continue
		}
		lastOK = a.clock.Now()
	}
}

func (a *Agent) leaseKick() <-chan struct{} { return a.leaseWake }

func (a *Agent) kickLease() {
	select {
	case a.leaseWake <- struct{}{}:
	default:
	}
}

// renewLease creates or renews the agent's Lease with its current free slots.
func (a *Agent) renewLease(ctx context.Context) error {
	info := agentlease.Info{Name: a.cfg.Name, Pool: a.cfg.Pool, Systems: a.cfg.Systems, Features: a.cfg.Features,
		Slots: a.cfg.Slots, FreeSlots: a.free(), Unhealthy: a.unhealthyReason()}
	key := client.ObjectKey{Namespace: a.cfg.Namespace, Name: a.cfg.Name}
	l := &coordinationv1.Lease{}
	err := a.client.Get(ctx, key, l)
	if apierrors.IsNotFound(err) {
		l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: a.cfg.Name, Namespace: a.cfg.Namespace}}
		agentlease.Apply(l, info, a.clock.Now(), a.cfg.LeaseDuration)
		return a.client.Create(ctx, l)
	}
	if err != nil {
		return err
	}
	agentlease.Apply(l, info, a.clock.Now(), a.cfg.LeaseDuration)
	return a.client.Update(ctx, l)
}

// wakeHandler turns informer events into a wake-up of the claim loop.
type wakeHandler struct{ kick func() }

func (h wakeHandler) OnAdd(any, bool)   { h.kick() }
func (h wakeHandler) OnUpdate(any, any) { h.kick() }
func (h wakeHandler) OnDelete(any)      { h.kick() }
