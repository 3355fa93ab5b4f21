package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/buildname"
	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/test/farm"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// pluginDAG: c needs b and a, b needs a. a is built and its output published before the submit,
// so --all-missing creates Builds for b and c only.
const pluginDAG = `let
  bb = builtins.storePath %s;
  mk = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "${bb}/bin/busybox";
    args = [ "sh" "-c" script ];
  };
  a = mk "plugin-a" "echo a > $out";
  b = mk "plugin_b.x" "echo ${a} > $out";
  c = mk "Plugin-C-1.0" "echo ${a} ${b} > $out";
in %s`

// TestKubectlPluginSubmitAndLogs runs the real kubectl-guixfarm binary against the test
// apiserver, MinIO and a nix-daemon: submit --all-missing publishes the .drv closure and creates
// the missing Builds under deterministic names, a re-submit finds them unchanged, a name taken by
// another derivation is refused naming both, and logs prints (and follows) a log from the bucket.
func TestKubectlPluginSubmitAndLogs(t *testing.T) {
	ctx := context.Background()
	bin := pluginBinary(t)
	m := testbed.StartMinIO(t)
	nixd := testbed.StartNixDaemon(t, testbed.NixOptions{})
	bb := nixd.AddBusybox(t)
	key, err := signing.GenerateNixKey(rand.Reader, "plugin-test-1")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "nix-signing-key.sec")
	if err := os.WriteFile(keyFile, []byte(key.Text()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := bucket.Config{Endpoint: m.URL, Bucket: "farm", AccessKey: m.AccessKey, SecretKey: m.SecretKey,
		Keys: signing.Keys{Nix: []signing.NixSecretKey{key}}}
	pub, err := bucket.NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.EnsureBucket(ctx); err != nil { // with the anonymous read policy logs relies on
		t.Fatal(err)
	}
	drv := func(attr string) string {
		return nixd.Instantiate(t, "plugin-"+attr, fmt.Sprintf(pluginDAG, testbed.NixString(bb), attr))
	}
	a, b, c := drv("a"), drv("b"), drv("c")
	aOut := nixd.MustRun(t, "nix-store", "--realise", a)
	if _, err := pub.Publish(ctx, bucket.StoreItem{StorePath: aOut, Deriver: a, Open: bucket.DiskItem(aOut, nixd.HostPath(aOut)).Open}); err != nil {
		t.Fatalf("publishing a's output: %v", err)
	}

	kubeconfig := env.Kubeconfig(t)
	ns := env.Namespace(t, "plugin")
	plugin := func(args ...string) (stdout, stderr string, err error) {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		cmd := exec.CommandContext(cctx, bin, append([]string{"--kubeconfig", kubeconfig, "-n", ns}, args...)...)
		cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+m.AccessKey, "AWS_SECRET_ACCESS_KEY="+m.SecretKey,
			"GUIXFARM_BUCKET_ENDPOINT="+m.URL, "GUIXFARM_BUCKET=farm")
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err = cmd.Run()
		return o.String(), e.String(), err
	}
	submitArgs := []string{"submit", "--all-missing", "--priority", "7", "-l", "tag=plugin-test", "--timeout", "1h",
		"--daemon-socket", nixd.Socket, "--signing-keys", keyFile, c}
	name := func(drv string) string {
		n, err := buildname.For(drv)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	want := fmt.Sprintf("build/%s created %s\nbuild/%s created %s\n", name(b), b, name(c), c)
	out, errOut, err := plugin(submitArgs...)
	if err != nil || out != want {
		t.Fatalf("submit: %v\nstdout:\n%s\nwant:\n%s\nstderr:\n%s", err, out, want, errOut)
	}
	t.Logf("submit said on stderr: %s", errOut)

	// The .drv closure is in the bucket, signed: c.drv, b.drv, a.drv and busybox.
	reader, err := bucket.NewReader(bucket.Config{Endpoint: m.URL, Bucket: "farm"},
		bucket.ReaderOptions{TrustedNixKeys: []signing.NixPublicKey{key.Public()}})
	if err != nil {
		t.Fatal(err)
	}
	closure := strings.Fields(nixd.MustRun(t, "nix-store", "--query", "--requisites", c))
	if len(closure) != 4 {
		t.Errorf("closure of %s: %v, want 4 paths", c, closure)
	}
	for _, p := range closure {
		if _, err := reader.NarInfo(ctx, p); err != nil {
			t.Errorf("narinfo of %s: %v", p, err)
		}
	}

	// The Builds: named after their derivations, as asked; none for a, whose output is there.
	var list farmv1.BuildList
	if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 2 {
		t.Errorf("%d Builds, want 2 (b and c)", len(list.Items))
	}
	for _, want := range []struct {
		drv   string
		input bool
	}{{b, true}, {c, false}} {
		var got farmv1.Build
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name(want.drv)}, &got); err != nil {
			t.Fatalf("Build of %s: %v", want.drv, err)
		}
		s := got.Spec
		if s.Derivation != want.drv || s.Priority != 7 || got.Labels["tag"] != "plugin-test" ||
			s.TimeoutSeconds == nil || *s.TimeoutSeconds != 3600 || s.MaxSilentSeconds != nil || s.SkipIfOutputsAvailable != want.input {
			t.Errorf("build/%s: labels %v, spec %+v", got.Name, got.Labels, s)
		}
	}
	if !strings.HasPrefix(name(c), "plugin-c-1.0-") || !strings.HasPrefix(name(b), "plugin-b.x-") {
		t.Errorf("names %s and %s do not follow their derivations' names", name(c), name(b))
	}

	// Again: nothing to upload, the same Builds.
	out, errOut, err = plugin(submitArgs...)
	want = fmt.Sprintf("build/%s unchanged %s\nbuild/%s unchanged %s\n", name(b), b, name(c), c)
	if err != nil || out != want {
		t.Fatalf("re-submit: %v\nstdout:\n%s\nwant:\n%s\nstderr:\n%s", err, out, want, errOut)
	}
	if !strings.Contains(errOut, "publishing 0") {
		t.Errorf("re-submit uploaded something: %s", errOut)
	}

	// A Build of that name for another derivation is refused, naming both.
	other := env.Namespace(t, "plugin-conflict")
	taken := farm.MakeBuild(name(c), other, a).Obj()
	if err := env.Client.Create(ctx, taken); err != nil {
		t.Fatal(err)
	}
	_, errOut, err = plugin(append([]string{"-n", other}, submitArgs...)...)
	if err == nil || !strings.Contains(errOut, a) || !strings.Contains(errOut, c) {
		t.Errorf("submit over a Build of another derivation: %v, stderr:\n%s", err, errOut)
	}

	// logs: a Build that never ran says so.
	_, errOut, err = plugin("logs", name(b))
	if err == nil || !strings.Contains(errOut, "has not started yet") {
		t.Errorf("logs of a Build that never ran: %v, stderr:\n%s", err, errOut)
	}
	// An attempt's log, as the agent publishes it, while the Build runs; then followed.
	var cb farmv1.Build
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name(c)}, &cb); err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	cb.Status.Phase, cb.Status.AttemptCount = farmv1.BuildRunning, 1
	cb.Status.Attempt = &farmv1.Attempt{Agent: "agent-0", Started: now}
	if err := env.Client.Status().Update(ctx, &cb); err != nil {
		t.Fatal(err)
	}
	part1 := "building c\nline 2\n"
	if err := pub.PublishAttemptLog(ctx, c, 1, strings.NewReader(part1)); err != nil {
		t.Fatal(err)
	}
	out, errOut, err = plugin("logs", "build/"+name(c))
	if err != nil || out != part1 {
		t.Errorf("logs: %v, stdout %q, want %q; stderr:\n%s", err, out, part1, errOut)
	}

	type result struct {
		out, errOut string
		err         error
	}
	followed := make(chan result, 1)
	go func() {
		o, e, err := plugin("logs", name(c), "-f")
		followed <- result{o, e, err}
	}()
	time.Sleep(2500 * time.Millisecond) // the follower has printed part 1 and polls again
	part2 := "line 3, printed once\n"
	if err := pub.PublishAttemptLog(ctx, c, 1, strings.NewReader(part1+part2)); err != nil {
		t.Fatal(err)
	}
	cb.Status.Phase, cb.Status.Attempt = farmv1.BuildSucceeded, nil
	cb.Status.CompletionTime = &now
	cb.Status.Attempts = []farmv1.AttemptRecord{{Agent: "agent-0", Start: now, End: now, Result: farmv1.AttemptSucceeded, Reason: farmv1.ReasonSucceeded}}
	if err := env.Client.Status().Update(ctx, &cb); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-followed:
		if r.err != nil || r.out != part1+part2 {
			t.Errorf("logs -f: %v, stdout %q, want %q; stderr:\n%s", r.err, r.out, part1+part2, r.errOut)
		}
		if !strings.Contains(r.errOut, "attempt 1 on agent-0: Succeeded") {
			t.Errorf("logs -f did not say how the attempt ended: %s", r.errOut)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("logs -f did not end with the Build")
	}
	// By derivation path: the Build named after it.
	out, errOut, err = plugin("logs", "--attempt", "1", c)
	if err != nil || out != part1+part2 {
		t.Errorf("logs --attempt 1 DRV: %v, stdout %q; stderr:\n%s", err, out, errOut)
	}
}

// pluginBinary builds cmd/kubectl-guixfarm once per test binary.
func pluginBinary(t testing.TB) string { return farm.Binary(t, "kubectl-guixfarm") }
