package publishing

import (
	"context"
	"errors"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
)

// reviewer answers TokenReviews from a table of tokens, counting them.
func reviewer(t *testing.T, answers map[string]authnv1.TokenReviewStatus, calls *int) client.Client {
	t.Helper()
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return fake.NewClientBuilder().WithScheme(s).WithInterceptorFuncs(interceptor.Funcs{
		Create: func(_ context.Context, _ client.WithWatch, obj client.Object, _ ...client.CreateOption) error {
			tr := obj.(*authnv1.TokenReview)
			*calls++
			tr.Status = answers[tr.Spec.Token]
			return nil
		},
	}).Build()
}

func agentStatus(ns, sa, pod string, extra bool) authnv1.TokenReviewStatus {
	st := authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"guix-farm-publisher"},
		User: authnv1.UserInfo{Username: "system:serviceaccount:" + ns + ":" + sa}}
	if extra {
		st.User.Extra = map[string]authnv1.ExtraValue{ExtraPodName: {pod}, ExtraPodUID: {"uid-" + pod}}
	}
	return st
}

// TestTokenReviewerIdentity: the identity rule. A bound token of an agents' ServiceAccount names
// its pod as the agent; anything else is refused, 401 or 403, whatever the apiserver lets it do.
func TestTokenReviewerIdentity(t *testing.T) {
	answers := map[string]authnv1.TokenReviewStatus{
		"agent-a":   agentStatus("farm", "guix-farm-agent", "agent-a", true),
		"unbound":   agentStatus("farm", "guix-farm-agent", "", false),
		"other-sa":  agentStatus("farm", "default", "web-1", true),
		"a-user":    {Authenticated: true, Audiences: []string{"guix-farm-publisher"}, User: authnv1.UserInfo{Username: "alice", Extra: map[string]authnv1.ExtraValue{ExtraPodName: {"agent-a"}}}},
		"refused":   {Authenticated: false, Error: "invalid bearer token"},
		"wrong-aud": {Authenticated: true, Audiences: []string{"https://kubernetes.default.svc"}, User: agentStatus("farm", "guix-farm-agent", "agent-a", true).User},
	}
	calls := 0
	now := time.Unix(1_700_000_000, 0)
	r := &TokenReviewer{Client: reviewer(t, answers, &calls), Audiences: []string{"guix-farm-publisher"},
		ServiceAccounts: []string{"guix-farm-agent"}, TTL: time.Minute, Now: func() time.Time { return now }}
	ctx := context.Background()
	id, err := r.Authenticate(ctx, "agent-a")
	if err != nil || id != (Identity{Namespace: "farm", ServiceAccount: "guix-farm-agent", Agent: "agent-a"}) {
		t.Fatalf("agent-a: %+v, %v", id, err)
	}
	for tok, want := range map[string]error{
		"": ErrUnauthenticated, "refused": ErrUnauthenticated, "wrong-aud": ErrUnauthenticated,
		"unbound": ErrForbidden, "other-sa": ErrForbidden, "a-user": ErrForbidden,
	} {
		if _, err := r.Authenticate(ctx, tok); !errors.Is(err, want) {
			t.Errorf("token %q: %v, want %v", tok, err, want)
		} else {
			t.Logf("token %q: %v", tok, err)
		}
	}
	// One review per token and TTL; refusals are not remembered.
	before := calls
	r.Authenticate(ctx, "agent-a")
	r.Authenticate(ctx, "refused")
	if calls != before+1 {
		t.Errorf("%d reviews for a remembered token and a refused one, want 1", calls-before)
	}
	now = now.Add(2 * time.Minute)
	r.Authenticate(ctx, "agent-a")
	if calls != before+2 {
		t.Errorf("a remembered answer past its TTL was not reviewed again")
	}
}
