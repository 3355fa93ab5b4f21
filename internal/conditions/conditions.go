// Package conditions sets metav1.Conditions the same way everywhere: observedGeneration stamped,
// transition time truncated to seconds (so a round-tripped object equals its in-memory self) and
// bounded messages.
package conditions

import (
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MaxMessageLength bounds condition messages; the API allows 32768 but a Build must stay small.
const MaxMessageLength = 256

// Set records a condition on conds for an object at generation gen. It reports whether anything changed.
// The transition time only moves when the status does.
func Set(conds *[]metav1.Condition, gen int64, now time.Time, typ string, status metav1.ConditionStatus, reason, message string) bool {
	if len(message) > MaxMessageLength {
		message = message[:MaxMessageLength-3] + "..."
	}
	old := meta.FindStatusCondition(*conds, typ)
	if old != nil && old.Status == status && old.Reason == reason && old.Message == message && old.ObservedGeneration == gen {
		return false
	}
	c := metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: message, ObservedGeneration: gen,
		LastTransitionTime: metav1.NewTime(now.Truncate(time.Second)),
	}
	if old != nil && old.Status == status {
		c.LastTransitionTime = old.LastTransitionTime
	}
	meta.SetStatusCondition(conds, c)
	// SetStatusCondition keeps the old transition time only when the status is unchanged; mirror it.
	return true
}

// Remove deletes a condition; it reports whether one was there.
func Remove(conds *[]metav1.Condition, typ string) bool {
	return meta.RemoveStatusCondition(conds, typ)
}

// IsTrue reports whether the condition is present with status True.
func IsTrue(conds []metav1.Condition, typ string) bool {
	return meta.IsStatusConditionTrue(conds, typ)
}
