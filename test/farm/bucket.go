package farm

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/publishing"
	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/internal/signing/keygen"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// PublisherAudience is the audience of the agents' tokens for the publisher service (the chart's).
const PublisherAudience = "guix-farm-publisher"

// Bucket is the farm's binary cache on a test MinIO: the bucket with its nix-cache-info, the
// farm's signing keys, a publisher holding them and a reader that trusts them.
type Bucket struct {
	MinIO *testbed.MinIO
	// URL is the bucket's anonymous URL: a substituter.
	URL string
	// Config has the admin's credentials and no keys.
	Config bucket.Config
	// KeyFiles are the farm's secret keys (Nix and Guix), as keygen writes them; NixPublic is
	// the Nix public key ("name:base64") clients trust.
	KeyFiles  []string
	NixPublic string
	Publisher *bucket.Publisher
	// Reader verifies narinfos against the farm's key and .drv files against their store paths,
	// as the controller does with signing keys.
	Reader *bucket.Reader
}

// NewBucket starts MinIO and makes the bucket name with fresh keys.
func NewBucket(t testing.TB, name string) *Bucket {
	t.Helper()
	ctx := context.Background()
	m := testbed.StartMinIO(t)
	b := &Bucket{MinIO: m, URL: m.BucketURL(name),
		Config: bucket.Config{Endpoint: m.Endpoint, Bucket: name, AccessKey: m.AccessKey, SecretKey: m.SecretKey}}
	keys, err := keygen.Generate(keygen.Options{Name: "farm-test-1", Dir: filepath.Join(t.TempDir(), "keys")})
	if err != nil {
		t.Fatalf("generating the farm's keys: %v", err)
	}
	b.NixPublic = keys.NixPublic.String()
	b.KeyFiles = []string{keys.Files[signing.SecretDataNixKey], keys.Files[signing.SecretDataGuixKey]}
	pcfg := b.Config
	pcfg.KeyFiles = b.KeyFiles
	if b.Publisher, err = bucket.NewPublisher(pcfg); err != nil {
		t.Fatalf("making the bucket's publisher: %v", err)
	}
	if err := b.Publisher.EnsureBucket(ctx); err != nil {
		t.Fatalf("creating bucket %s: %v", name, err)
	}
	if err := b.Publisher.EnsureCacheInfo(ctx); err != nil {
		t.Fatalf("writing %s's nix-cache-info: %v", name, err)
	}
	rcfg := b.Config
	rcfg.AllowUnsigned = true
	if b.Reader, err = bucket.NewReader(rcfg, bucket.ReaderOptions{TrustedNixKeys: []signing.NixPublicKey{keys.NixPublic}}); err != nil {
		t.Fatalf("making the bucket's reader: %v", err)
	}
	return b
}

// PublisherOptions are the controller's publisher service on this bucket, authenticating agents
// by TokenReviews of their pod-bound tokens (audience PublisherAudience, ServiceAccount
// AgentServiceAccount).
func (e *Env) PublisherOptions(b *Bucket) *publishing.Options {
	return &publishing.Options{Publisher: b.Publisher, Reread: true,
		Auth: &publishing.TokenReviewer{Client: e.Client, Audiences: []string{PublisherAudience},
			ServiceAccounts: []string{AgentServiceAccount}}}
}

// BindAgentRole creates AgentServiceAccount in namespace and binds the agents' ClusterRole
// (config/rbac/agent, made by controller-gen from the agent's markers) to it: an agent that
// authenticates as its pod's ServiceAccount (in-cluster) has what the chart gives it.
func (e *Env) BindAgentRole(t testing.TB, namespace string) {
	t.Helper()
	ctx := context.Background()
	data, err := os.ReadFile(filepath.Join(Root(), "config", "rbac", "agent", "role.yaml"))
	if err != nil {
		t.Fatalf("reading the agents' ClusterRole: %v", err)
	}
	role := &rbacv1.ClusterRole{}
	if err := yaml.UnmarshalStrict(data, role); err != nil {
		t.Fatalf("config/rbac/agent/role.yaml: %v", err)
	}
	if err := e.Client.Create(ctx, role); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating ClusterRole %s: %v", role.Name, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: AgentServiceAccount, Namespace: namespace}}
	if err := e.Client.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating ServiceAccount %s/%s: %v", namespace, AgentServiceAccount, err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: AgentServiceAccount, Namespace: namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: AgentServiceAccount, Namespace: namespace}},
	}
	if err := e.Client.Create(ctx, binding); err != nil {
		t.Fatalf("binding ClusterRole %s in %s: %v", role.Name, namespace, err)
	}
}
