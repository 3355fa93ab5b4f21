package daemonbuilder

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/minio/minio-go/v7"

	"github.com/guixfarm/guix-farm/agent/buildstep"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// rig is one submitter store (where derivations are instantiated), the farm's bucket, and an agent
// store whose daemon substitutes from the bucket only.
type rig struct {
	submit, agent *testbed.NixDaemon
	minio         *testbed.MinIO
	pub           *bucket.Publisher
	bb            string
	key           signing.NixSecretKey
	bucketURL     string
}

func newRig(t testing.TB) *rig {
	t.Helper()
	m := testbed.StartMinIO(t)
	key, err := signing.GenerateNixKey(rand.Reader, "farm-test-1")
	if err != nil {
		t.Fatal(err)
	}
	cfg := bucket.Config{Endpoint: m.Endpoint, Bucket: "farm", AccessKey: m.AccessKey, SecretKey: m.SecretKey,
		Keys: signing.Keys{Nix: []signing.NixSecretKey{key}}}
	pub, err := bucket.NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := pub.EnsureBucket(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pub.EnsureCacheInfo(ctx); err != nil {
		t.Fatal(err)
	}
	r := &rig{minio: m, pub: pub, key: key, bucketURL: m.BucketURL("farm")}
	r.submit = testbed.StartNixDaemon(t, testbed.NixOptions{})
	r.agent = r.newAgent(t)
	r.bb = r.submit.AddBusybox(t)
	return r
}

// newAgent starts another agent daemon, substituting from the bucket only.
func (r *rig) newAgent(t testing.TB) *testbed.NixDaemon {
	return testbed.StartNixDaemon(t, testbed.NixOptions{Substituters: []string{r.bucketURL}, TrustedPublicKeys: []string{r.key.Public().String()}})
}

// expr is a Nix expression of a busybox derivation running script; deps are expressions of its
// inputs, bound to $in0, $in1, ... A nonce makes each expression (and so its .drv) new.
func (r *rig) expr(name, script string, deps ...string) string {
	var in strings.Builder
	for i, d := range deps {
		fmt.Fprintf(&in, " in%d = %s;", i, d)
	}
	return fmt.Sprintf(`(let bb = builtins.storePath %s; in
derivation { name = %s; system = builtins.currentSystem; builder = "${bb}/bin/busybox";
  args = [ "sh" "-c" %s ]; inherit bb; nonce = %s; %s })`,
		testbed.NixString(r.bb), testbed.NixString(name), testbed.NixString(script),
		testbed.NixString(strconv.FormatInt(time.Now().UnixNano(), 10)), in.String())
}

// drv instantiates expr in the submitter's store and publishes its closure (the .drv, busybox,
// input .drvs) to the bucket, as `kubectl guixfarm submit` does.
func (r *rig) drv(t testing.TB, name, expr string) (drv, out string) {
	t.Helper()
	drv = r.submit.Instantiate(t, name, expr)
	out = r.submit.MustRun(t, "nix-store", "-q", "--outputs", drv)
	r.publishFrom(t, r.submit, drv)
	return drv, out
}

// publishFrom publishes path's closure as d's daemon has it.
func (r *rig) publishFrom(t testing.TB, d *testbed.NixDaemon, paths ...string) {
	t.Helper()
	b := r.builder(t, d)
	ctx := context.Background()
	conn, err := b.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	items, err := b.closure(ctx, conn, paths)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.pub.Publish(ctx, Attempt{}, items, nil); err != nil {
		t.Fatal(err)
	}
}

func (r *rig) builder(t testing.TB, d *testbed.NixDaemon) *Builder {
	t.Helper()
	b, err := New(Config{Socket: d.Socket, SubstituteURLs: []string{r.bucketURL}, TrustedPublicKeys: []string{r.key.Public().String()},
		TimeoutGrace: 5 * time.Second}, BucketPublisher{P: r.pub}, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

type logBuf struct {
	mu sync.Mutex
	bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.Buffer.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.Buffer.String()
}

func request(drv string, log *logBuf) buildstep.Request {
	return buildstep.Request{Build: "ns/b", Derivation: drv, Attempt: 1, Agent: "a1", Log: log,
		StillOwned: func(context.Context) error { return nil }}
}

func (r *rig) narinfo(t *testing.T, path string) (int, string) {
	t.Helper()
	hash := strings.SplitN(strings.TrimPrefix(path, testbed.StoreDir+"/"), "-", 2)[0]
	return r.minio.Get(t, r.bucketURL+"/"+hash+".narinfo")
}

func TestDaemonBuilder(t *testing.T) {
	r := newRig(t)
	b := r.builder(t, r.agent)
	ctx := context.Background()

	t.Run("builds, publishes the closure, NarHash as the daemon says", func(t *testing.T) {
		depExpr := r.expr("dep", `echo dep > $out`)
		dep, depOut := r.drv(t, "dep", depExpr)
		drv, out := r.drv(t, "top", r.expr("top", `$bb/bin/busybox cat $in0 > $out; printf 'building top \377\n'; $bb/bin/busybox seq 1 2000`, depExpr))
		// The input's output is in the bucket, as if the farm built it.
		r.submit.MustRun(t, "nix-store", "--realise", dep)
		r.publishFrom(t, r.submit, depOut)
		log := &logBuf{}
		res, err := b.Run(ctx, request(drv, log))
		if err != nil {
			t.Fatalf("Run: %v\nlog:\n%s\ndaemon:\n%s", err, log.String(), r.agent.Logs())
		}
		if len(res.Outputs) != 1 || res.Outputs[0].Path != out || !strings.HasPrefix(res.Outputs[0].NarHash, "sha256:") {
			t.Fatalf("outputs %+v, want %s", res.Outputs, out)
		}
		want := r.agent.MustRun(t, "nix-store", "-q", "--hash", out)
		if res.Outputs[0].NarHash != want {
			t.Errorf("NarHash %s, daemon says %s", res.Outputs[0].NarHash, want)
		}
		if code, body := r.narinfo(t, out); code != 200 || !strings.Contains(body, "NarHash: "+want) {
			t.Errorf("narinfo: %d %s", code, body)
		}
		if !strings.Contains(log.String(), "building top \xff") || !strings.Contains(log.String(), "\n2000\n") {
			t.Errorf("log lacks the builder's lines:\n%s", log.String())
		}
	})

	t.Run("failed build carries the log", func(t *testing.T) {
		drv, _ := r.drv(t, "fails", r.expr("fails", `echo about to fail; exit 3`))
		log := &logBuf{}
		_, err := b.Run(ctx, request(drv, log))
		if k := buildstep.KindOf(err); k != buildstep.KindBuildFailed {
			t.Fatalf("kind %s (%v), want BuildFailed", k, err)
		}
		if !strings.Contains(log.String(), "about to fail") {
			t.Errorf("log: %q", log.String())
		}
	})

	t.Run("missing input handed back with its derivation", func(t *testing.T) {
		depExpr := r.expr("never-built", `echo x > $out`)
		dep, depOut := r.drv(t, "never-built", depExpr)
		drv, _ := r.drv(t, "needs-it", r.expr("needs-it", `cat $in0 > $out`, depExpr))
		_, err := b.Run(ctx, request(drv, &logBuf{}))
		var se *buildstep.Error
		if !errors.As(err, &se) || se.Kind != buildstep.KindMissingInputs {
			t.Fatalf("got %v, want MissingInputs", err)
		}
		if len(se.MissingPaths) != 1 || se.MissingPaths[0] != depOut || len(se.MissingDerivations) != 1 || se.MissingDerivations[0] != dep {
			t.Errorf("missing %v from %v, want %s from %s", se.MissingPaths, se.MissingDerivations, depOut, dep)
		}
	})

	t.Run("local input that differs from the farm's is replaced before the build", func(t *testing.T) {
		// The agent built the input itself (an attempt it lost) and another agent's build of
		// this non-reproducible derivation was published instead.
		depExpr := r.expr("random-dep", `$bb/bin/busybox head -c 32 /dev/urandom > $out`)
		dep, depOut := r.drv(t, "random-dep", depExpr)
		drv, out := r.drv(t, "on-random", r.expr("on-random", `$bb/bin/busybox cat $in0 > $out`, depExpr))
		r.agent.MustRun(t, "nix-store", "--realise", dep)
		r.submit.MustRun(t, "nix-store", "--realise", dep)
		r.publishFrom(t, r.submit, depOut)
		farms := r.submit.MustRun(t, "nix-store", "-q", "--hash", depOut)
		if local := r.agent.MustRun(t, "nix-store", "-q", "--hash", depOut); local == farms {
			t.Fatalf("both daemons built the same random output %s: the test proves nothing", local)
		}
		log := &logBuf{}
		if _, err := b.Run(ctx, request(drv, log)); err != nil {
			t.Fatalf("Run: %v (kind %s)\nlog:\n%s", err, buildstep.KindOf(err), log.String())
		}
		if local := r.agent.MustRun(t, "nix-store", "-q", "--hash", depOut); local != farms {
			t.Errorf("the agent's copy of the input is %s, the farm's %s", local, farms)
		}
		if code, _ := r.narinfo(t, out); code != 200 {
			t.Errorf("no narinfo for %s (%d)", out, code)
		}
	})

	t.Run("input whose nar is gone from the bucket is missing, not a failure", func(t *testing.T) {
		depExpr := r.expr("nar-lost", `echo lost > $out`)
		dep, depOut := r.drv(t, "nar-lost", depExpr)
		r.submit.MustRun(t, "nix-store", "--realise", dep)
		r.publishFrom(t, r.submit, depOut)
		_, ni := r.narinfo(t, depOut)
		url := ""
		for _, l := range strings.Split(ni, "\n") {
			if u, ok := strings.CutPrefix(l, "URL: "); ok {
				url = u
			}
		}
		if err := r.minio.Client.RemoveObject(ctx, "farm", url, minio.RemoveObjectOptions{}); err != nil {
			t.Fatal(err)
		}
		drv, _ := r.drv(t, "needs-lost", r.expr("needs-lost", `cat $in0 > $out`, depExpr))
		_, err := b.Run(ctx, request(drv, &logBuf{}))
		var se *buildstep.Error
		if !errors.As(err, &se) || se.Kind != buildstep.KindMissingInputs {
			t.Fatalf("got %v, want MissingInputs", err)
		}
		if !slices.Equal(se.MissingPaths, []string{depOut}) || !slices.Equal(se.MissingDerivations, []string{dep}) {
			t.Errorf("missing %v from %v, want %s from %s", se.MissingPaths, se.MissingDerivations, depOut, dep)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		drv, _ := r.drv(t, "slow", r.expr("slow", `$bb/bin/busybox sleep 30; echo > $out`))
		req := request(drv, &logBuf{})
		req.Limits.Timeout = 2 * time.Second
		start := time.Now()
		_, err := b.Run(ctx, req)
		if k := buildstep.KindOf(err); k != buildstep.KindTimedOut {
			t.Fatalf("kind %s (%v), want TimedOut", k, err)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Errorf("took %s", d)
		}
	})

	t.Run("cancel stops the build within 5s, nothing published", func(t *testing.T) {
		drv, out := r.drv(t, "canceled", r.expr("canceled", `$bb/bin/busybox sleep 60; echo > $out`))
		cctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(time.Second, cancel)
		start := time.Now()
		_, err := b.Run(cctx, request(drv, &logBuf{}))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if d := time.Since(start); d > 6*time.Second {
			t.Errorf("returned after %s", d)
		}
		if code, _ := r.narinfo(t, out); code != 404 {
			t.Errorf("narinfo of a canceled build: %d", code)
		}
	})

	t.Run("lost ownership publishes no narinfo", func(t *testing.T) {
		drv, out := r.drv(t, "taken", r.expr("taken", `echo taken > $out`))
		req := request(drv, &logBuf{})
		req.StillOwned = func(context.Context) error { return errors.New("taken over by a2") }
		if _, err := b.Run(ctx, req); err == nil || !errors.Is(err, errOwnership) {
			t.Fatalf("got %v, want an ownership error", err)
		}
		if code, _ := r.narinfo(t, out); code != 404 {
			t.Errorf("narinfo after a lost claim: %d", code)
		}
	})

	t.Run("daemon down is the agent's trouble", func(t *testing.T) {
		bad, err := New(Config{Socket: "/nonexistent/socket"}, BucketPublisher{P: r.pub}, logr.Discard())
		if err != nil {
			t.Fatal(err)
		}
		_, err = bad.Run(ctx, request("/gnu/store/00000000000000000000000000000000-x.drv", &logBuf{}))
		if k := buildstep.KindOf(err); k != buildstep.KindAgentUnhealthy {
			t.Fatalf("kind %s (%v), want AgentUnhealthy", k, err)
		}
		if err := bad.Check(ctx, BucketPublisher{P: r.pub}, StoreHygiene{}); err == nil {
			t.Fatal("Check passed with no daemon")
		}
		if err := b.Check(ctx, BucketPublisher{P: r.pub}, StoreHygiene{Agent: "a1"}); err != nil {
			t.Fatalf("Check: %v", err)
		}
	})
}
