package publishing

import (
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Identity is who a request comes from: an agent, by the ServiceAccount token of its Pod.
type Identity struct {
	// Namespace and ServiceAccount are the token's ServiceAccount's.
	Namespace, ServiceAccount string
	// Agent is the name of the Pod the token is bound to: the agent's name (an AgentPool pod's
	// agent is named after its pod, and so is its Lease).
	Agent string
}

// Authenticator tells who a bearer token belongs to.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (Identity, error)
}

// Keys of a bound ServiceAccount token's user info (the apiserver's serviceaccount authenticator
// sets them for tokens bound to a Pod: the projected token of a pod, or a TokenRequest with a Pod
// binding).
const (
	ExtraPodName = "authentication.kubernetes.io/pod-name"
	ExtraPodUID  = "authentication.kubernetes.io/pod-uid"
)

// TokenReviewer authenticates agents with TokenReviews (authentication.k8s.io/v1), and takes the
// agent's name from the Pod its token is bound to. Identity rule: the token must be a
// ServiceAccount token (system:serviceaccount:<namespace>:<name>), of one of ServiceAccounts when
// that list is set, bound to a Pod (user info extra authentication.kubernetes.io/pod-name): that
// Pod's name is the agent. A token that is not bound to a Pod (a legacy Secret token, a static
// token file entry, a user's credentials) names no agent and is refused, whatever it may do on the
// apiserver: tests and `make run` use real bound tokens (a TokenRequest for a Pod object that
// never runs), so there is no switch that turns the rule off.
type TokenReviewer struct {
	// Client creates TokenReviews (RBAC: create tokenreviews, a cluster-scoped resource).
	Client client.Client
	// Audiences, when set, are what the token must be meant for (the agent pod's projected token
	// for the publisher has its own audience, so it is no apiserver credential). Empty: the
	// apiserver's own audiences.
	Audiences []string
	// ServiceAccounts, when set, are the only ServiceAccount names accepted (the agents').
	ServiceAccounts []string
	// TTL is how long a positive answer is remembered (default 30 s): one TokenReview per agent
	// and TTL, not per request. Ownership is checked at every request regardless.
	TTL time.Duration
	Now func() time.Time

	mu    sync.Mutex
	known map[[sha256.Size]byte]knownToken
}

type knownToken struct {
	id      Identity
	expires time.Time
}

// Authenticate implements Authenticator.
func (r *TokenReviewer) Authenticate(ctx context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, refuse(ReasonUnauthenticated, "no bearer token: send the agent pod's ServiceAccount token (Authorization: Bearer)")
	}
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	sum := sha256.Sum256([]byte(token))
	r.mu.Lock()
	k, ok := r.known[sum]
	r.mu.Unlock()
	if ok && now().Before(k.expires) {
		return k.id, nil
	}
	tr := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: r.Audiences}}
	if err := r.Client.Create(ctx, tr); err != nil {
		return Identity{}, refuse(ReasonUnavailable, "reviewing the token with the apiserver: %v", err)
	}
	id, err := r.identity(tr.Status)
	if err != nil {
		return Identity{}, err
	}
	ttl := r.TTL
	if ttl <= 0 {
		ttl = 30 * time.Second
	}
	r.mu.Lock()
	if r.known == nil || len(r.known) > 10000 {
		r.known = map[[sha256.Size]byte]knownToken{}
	}
	r.known[sum] = knownToken{id: id, expires: now().Add(ttl)}
	r.mu.Unlock()
	return id, nil
}

// identity applies the identity rule to a TokenReview's answer.
func (r *TokenReviewer) identity(st authnv1.TokenReviewStatus) (Identity, error) {
	if !st.Authenticated {
		msg := st.Error
		if msg == "" {
			msg = "the apiserver did not authenticate it"
		}
		if len(r.Audiences) > 0 {
			msg += fmt.Sprintf(" (the token must be meant for audience %s)", strings.Join(r.Audiences, ", "))
		}
		return Identity{}, refuse(ReasonUnauthenticated, "token refused: %s", msg)
	}
	if len(r.Audiences) > 0 && !slices.ContainsFunc(st.Audiences, func(a string) bool { return slices.Contains(r.Audiences, a) }) {
		return Identity{}, refuse(ReasonUnauthenticated, "token is for audiences %v, not %v", st.Audiences, r.Audiences)
	}
	user := st.User.Username
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || sa == "" {
		return Identity{}, refuse(ReasonForbidden, "%q is not a ServiceAccount: agents authenticate with their pod's ServiceAccount token", user)
	}
	if len(r.ServiceAccounts) > 0 && !slices.Contains(r.ServiceAccounts, sa) {
		return Identity{}, refuse(ReasonForbidden, "ServiceAccount %s/%s is not an agents' ServiceAccount (%s)", ns, sa, strings.Join(r.ServiceAccounts, ", "))
	}
	pods := st.User.Extra[ExtraPodName]
	if len(pods) != 1 || pods[0] == "" {
		return Identity{}, refuse(ReasonForbidden, "the token of %s is not bound to a Pod, so it names no agent: use the pod's projected ServiceAccount token (or a TokenRequest bound to the agent's Pod)", user)
	}
	return Identity{Namespace: ns, ServiceAccount: sa, Agent: pods[0]}, nil
}
