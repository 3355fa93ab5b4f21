package daemonbuilder

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/guixfarm/guix-farm/agent/buildstep"
	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/index"
	"github.com/guixfarm/guix-farm/internal/publishing"
)

// oneAgent authenticates every token as agent a1 of namespace ns: these tests are about the
// publication path; TokenReviews are tested on a real apiserver (test/integration).
type oneAgent struct{}

func (oneAgent) Authenticate(context.Context, string) (publishing.Identity, error) {
	return publishing.Identity{Namespace: "ns", ServiceAccount: "guix-farm-agent", Agent: "a1"}, nil
}

// service runs the publisher service in-process over pub, with a fake apiserver holding Build
// ns/b (uid uid-1) whose attempt 1 runs on a1, building drv. reread picks the commit's check.
func service(t testing.TB, pub *bucket.Publisher, drv string, reread bool) (*publishing.Client, client.Client) {
	t.Helper()
	s := runtime.NewScheme()
	if err := farmv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	b := &farmv1.Build{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "b", UID: types.UID("uid-1")},
		Spec: farmv1.BuildSpec{Derivation: drv},
		Status: farmv1.BuildStatus{Phase: farmv1.BuildRunning, AttemptCount: 1,
			Attempt: &farmv1.Attempt{Agent: "a1", Started: metav1.Now()}}}
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(b).WithStatusSubresource(b).
		WithIndex(&farmv1.Build{}, index.BuildAttemptAgent, index.AttemptAgent).Build()
	srv, err := publishing.NewServer(publishing.Options{Publisher: pub, Auth: oneAgent{}, Builds: c, Cache: c, Reread: reread, Log: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("a1's token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &publishing.Client{URL: hs.URL, TokenFile: tok, RetryFor: -1}, c
}

func remoteRequest(drv string, log *logBuf) buildstep.Request {
	r := request(drv, log)
	r.BuildUID = "uid-1"
	return r
}

// TestRemotePublisher: a build published through the publisher service (no credentials on the
// builder's side) leaves its output's signed narinfo and its log in the bucket, as the direct
// publisher does; an attempt that is no longer the agent's publishes nothing.
func TestRemotePublisher(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	drv, out := r.drv(t, "remote", r.expr("remote", `echo built remotely > $out; echo a line of log`))
	c, api := service(t, r.pub, drv, true)
	rp := &RemotePublisher{C: c}
	b, err := New(Config{Socket: r.agent.Socket, SubstituteURLs: []string{r.bucketURL}, TrustedPublicKeys: []string{r.key.Public().String()}},
		rp, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if err := rp.ProbeWrite(ctx, "a1"); err != nil {
		t.Errorf("probe as a1: %v", err)
	}
	if err := rp.ProbeWrite(ctx, "a2"); err == nil {
		t.Errorf("probe as a2 with a1's token: no error")
	}

	log := &logBuf{}
	res, err := b.Run(ctx, remoteRequest(drv, log))
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, r.agent.Logs())
	}
	want := r.agent.MustRun(t, "nix-store", "-q", "--hash", out)
	if len(res.Outputs) != 1 || res.Outputs[0].NarHash != want {
		t.Fatalf("outputs %+v, want %s with %s", res.Outputs, out, want)
	}
	if code, body := r.narinfo(t, out); code != 200 || !strings.Contains(body, "NarHash: "+want) || !strings.Contains(body, "Sig: "+r.key.Name+":") {
		t.Errorf("narinfo of %s: %d %q", out, code, body)
	}
	logs := &RemoteLogs{C: c}
	if err := logs.PutAttemptLog(ctx, drv, 1, strings.NewReader(log.String()), true); err != nil {
		t.Fatalf("PutAttemptLog: %v", err)
	}
	rd, _ := bucket.NewReader(bucket.Config{Endpoint: r.minio.URL, Bucket: "farm"}, bucket.ReaderOptions{})
	lr, err := rd.OpenLog(ctx, drv, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(lr)
	lr.Close()
	if !strings.Contains(string(got), "a line of log") {
		t.Errorf("log in the bucket: %q", got)
	}

	// The attempt is taken over: the next one publishes nothing.
	drv2, out2 := r.drv(t, "lost", r.expr("lost", `echo lost > $out`))
	bd := &farmv1.Build{}
	if err := api.Get(ctx, client.ObjectKey{Namespace: "ns", Name: "b"}, bd); err != nil {
		t.Fatal(err)
	}
	bd.Spec.Derivation = drv2
	if err := api.Update(ctx, bd); err != nil {
		t.Fatal(err)
	}
	bd.Status.Attempt = &farmv1.Attempt{Agent: "a2", Started: metav1.Now()}
	if err := api.Status().Update(ctx, bd); err != nil {
		t.Fatal(err)
	}
	_, err = b.Run(ctx, remoteRequest(drv2, &logBuf{}))
	if !errors.Is(err, errOwnership) || !errors.Is(err, publishing.ErrNotOwner) {
		t.Errorf("Run of an attempt taken over: %v; want the service's NotOwner", err)
	}
	if code, _ := r.narinfo(t, out2); code != 404 {
		t.Errorf("narinfo of the taken-over attempt's output: %d, want 404", code)
	}
}

// BenchmarkAgentPublish1000SmallRemote: BenchmarkAgentPublish1000Small's items published through
// the publisher service (in-process, over loopback HTTP): the uploads request, presigned PUTs of
// each nar from the agent, and the commit, where the service verifies each nar and writes the
// signed narinfos in closure order. reread reads every nar back (the default); size checks only
// its size. hack/benchfmt sets items/s against BenchmarkAgentPublish1000Small's.
func BenchmarkAgentPublish1000SmallRemote(b *testing.B) {
	for _, mode := range []string{"reread", "size"} {
		b.Run(mode, func(b *testing.B) { benchRemoteSmall(b, mode == "reread") })
	}
}

func benchRemoteSmall(b *testing.B, reread bool) {
	phases := &phaseTimer{}
	benchSmallPublish(b, "remote", Attempt{Namespace: "ns", Name: "b", UID: "uid-1", Number: 1}, func(pub *bucket.Publisher) Publisher {
		c, _ := service(b, pub, "/gnu/store/00000000000000000000000000000000-bench.drv", reread)
		c.HTTP = &http.Client{Transport: phases}
		return &RemotePublisher{C: c}
	})
	ms := func(d time.Duration) float64 { return d.Seconds() * 1000 / float64(b.N) }
	b.ReportMetric(ms(phases.get(publishing.PathUploads)), "uploads-request-ms")
	b.ReportMetric(ms(phases.get(publishing.PathCommit)), "commit-ms")
}

// phaseTimer is an HTTP transport adding up the time of the requests to each service path.
type phaseTimer struct {
	mu sync.Mutex
	by map[string]time.Duration
}

func (p *phaseTimer) RoundTrip(r *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := http.DefaultTransport.RoundTrip(r)
	p.mu.Lock()
	if p.by == nil {
		p.by = map[string]time.Duration{}
	}
	p.by[r.URL.Path] += time.Since(start)
	p.mu.Unlock()
	return resp, err
}

func (p *phaseTimer) get(path string) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.by[path]
}
