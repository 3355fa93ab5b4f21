package agents

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
)

// View tracks whether this controller can see the apiserver. An agent's Lease is judged expired on
// the controller's own clock from the renewal it last observed; time the controller could not see
// (an apiserver outage, a partition of the controller) must not count against agents, which could
// not renew either. So an agent's term runs from the later of its last observed renewal and the
// moment the view was restored.
type View struct {
	// Probe asks the apiserver something cheap; an error means it cannot be seen.
	Probe    func(ctx context.Context) error
	Interval time.Duration
	Clock    clock.Clock
	Log      logr.Logger

	mu sync.Mutex
	// blind is set while probes fail; restored is when the last blind spell ended.
	blind    bool
	restored time.Time
}

// NewView probes the apiserver of cfg with its readiness endpoint: an apiserver that answers but
// cannot reach etcd cannot take renewals either.
func NewView(cfg *rest.Config, c clock.Clock, log logr.Logger) (*View, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("making the apiserver probe: %w", err)
	}
	return &View{Clock: c, Log: log, Probe: func(ctx context.Context) error {
		return dc.RESTClient().Get().AbsPath("/readyz").Do(ctx).Error()
	}}, nil
}

// Start probes until ctx ends (a manager Runnable). It runs on every replica, leader or not: a new
// leader must know whether it could see before it took over.
func (v *View) Start(ctx context.Context) error {
	interval := v.Interval
	if interval <= 0 {
		interval = time.Second
	}
	t := v.Clock.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
		pctx, cancel := context.WithTimeout(ctx, max(interval, 2*time.Second))
		err := v.Probe(pctx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		v.observe(err == nil, v.Clock.Now())
		if err != nil {
			v.Log.V(1).Info("Apiserver not reachable; agents' Lease terms are paused", "error", err.Error())
		}
		t.Reset(interval)
	}
}

// NeedLeaderElection is false: see Start.
func (v *View) NeedLeaderElection() bool { return false }

func (v *View) observe(ok bool, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case !ok:
		v.blind = true
	case v.blind:
		v.blind = false
		v.restored = now
		v.Log.Info("Apiserver reachable again; agents' Lease terms restart now")
	}
}

// termStart is when an agent's term counts from, given the renewal observed at seenAt, and whether
// the controller can see now (while blind, no agent is judged).
func (v *View) termStart(seenAt time.Time) (time.Time, bool) {
	if v == nil {
		return seenAt, true
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.blind {
		return seenAt, false
	}
	if v.restored.After(seenAt) {
		return v.restored, true
	}
	return seenAt, true
}
