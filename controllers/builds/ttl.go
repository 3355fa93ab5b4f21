package builds

import (
	"context"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
)

// reconcileTTL deletes a finished Build once its TTL has passed (spec.ttlSecondsAfterFinished, or
// the farm default), like a Job's ttlSecondsAfterFinished. The bucket is the durable record.
func (r *Reconciler) reconcileTTL(ctx context.Context, b *farmv1.Build, now time.Time) (ctrl.Result, error) {
	ttl := r.DefaultTTL
	if b.Spec.TTLSecondsAfterFinished != nil {
		ttl = time.Duration(*b.Spec.TTLSecondsAfterFinished) * time.Second
	} else if ttl <= 0 {
		return ctrl.Result{}, nil
	}
	finished := b.CreationTimestamp.Time
	if b.Status.CompletionTime != nil {
		finished = b.Status.CompletionTime.Time
	}
	if wait := finished.Add(ttl).Sub(now); wait > 0 {
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	ctrl.LoggerFrom(ctx).V(1).Info("Deleting finished build: TTL passed", "ttl", ttl)
	// The UID precondition makes sure we delete the Build we looked at, not a new one of that name.
	err := r.Client.Delete(ctx, b, client.Preconditions{UID: &b.UID, ResourceVersion: &b.ResourceVersion})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, nil
}
