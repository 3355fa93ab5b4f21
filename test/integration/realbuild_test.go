package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"github.com/minio/minio-go/v7"
	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/agentlease"
	"github.com/guixfarm/guix-farm/internal/availability"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/drvsource"
	"github.com/guixfarm/guix-farm/internal/narinfo"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/internal/signing/keygen"
	"github.com/guixfarm/guix-farm/test/farm"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// realDAG is the sample the farm builds for real: derivations whose only tool is a static busybox.
// Each script starts with B=<busybox> and set -e. The flaky derivation fails unless a marker exists
// in /flaky, a host directory the agents' daemons bind into their sandboxes (extra-sandbox-paths):
// its first attempt creates the marker and fails, the next one succeeds, on either agent. The
// gated one fails until the test creates its gate there.
const realDAG = `{ bb, nonce, fixedHash }:
let
  busybox = builtins.storePath bb;
  mk = name: script: extra: derivation ({
    inherit name nonce;
    system = builtins.currentSystem;
    builder = "${busybox}/bin/busybox";
    args = [ "sh" "-c" ("B=${busybox}/bin/busybox\nset -e\n" + script) ];
  } // extra);
  chain0 = mk "chain-0" ''$B mkdir $out; echo chain-0 > $out/v'' { };
  chain1 = mk "chain-1" ''$B mkdir $out; echo ${chain0} > $out/dep; { $B cat ${chain0}/v; echo chain-1; } > $out/v'' { };
  chain2 = mk "chain-2" ''$B mkdir $out; echo ${chain1} > $out/dep; { $B cat ${chain1}/v; echo chain-2; } > $out/v'' { };
  gated = mk "gated" ''if [ -e /flaky/${nonce}-gate ]; then echo opened > $out; else echo "gated: closed"; exit 3; fi'' { };
  leaf = i: mk "leaf-${toString i}" ''echo leaf ${toString i} > $out'' { };
  leaves = builtins.genList leaf 10;
in builtins.listToAttrs (builtins.genList (i: { name = "leaf${toString i}"; value = builtins.elemAt leaves i; }) 10) // {
  inherit chain0 chain1 chain2;
  fanin = mk "fan-in" ''
    $B mkdir $out
    for l in ${builtins.concatStringsSep " " (map (l: "${l}") leaves)}; do echo $l >> $out/deps; $B cat $l >> $out/all; done
  '' { };
  multi = mk "multi" ''
    $B mkdir $out $lib
    echo "the library" > $lib/libmulti.txt
    echo "uses $lib/libmulti.txt" > $out/README
  '' { outputs = [ "out" "lib" ]; };
  fixed = mk "fixed" ''echo fixed content > $out'' { outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = fixedHash; };
  big = mk "big" ''
    $B mkdir $out
    $B head -c 33554432 /dev/urandom > $out/random
    $B head -c 33554432 /dev/zero > $out/zeros
  '' { };
  noisy = mk "noisy-log" ''
    printf 'not utf-8: \377\n'
    $B seq 1 100000
    echo quiet > $out
  '' { };
  flaky = mk "flaky" ''
    if [ -e /flaky/${nonce} ]; then echo second attempt > $out; else
      echo first > /flaky/${nonce}; echo "flaky: failing the first attempt"; exit 1
    fi
  '' { };
  failing = mk "always-fails" ''echo "going to fail for good"; exit 3'' { };
  inherit gated;
  afterGated = mk "after-gated" ''$B cat ${gated} > $out'' { };
  timesout = mk "times-out" ''echo "token-timeout-${nonce}"; $B sleep 60; echo > $out'' { };
  canceled = mk "canceled" ''echo "token-cancel-${nonce}"; $B sleep 60; echo > $out'' { };
  victim = mk "survives-agent-kill" ''echo "token-victim-${nonce}"; $B sleep 8; echo survived > $out'' { };
  paused = mk "survives-agent-pause" ''echo "token-paused-${nonce}"; $B sleep 6; $B head -c 32 /dev/urandom > $out'' { };
} // builtins.listToAttrs (builtins.genList (i: {
  name = "late${toString i}"; value = mk "late-${toString i}" ''echo late ${toString i} > $out'' { };
}) 8)
`

const fixedContent = "fixed content\n"

// rbBuild is one derivation of realDAG and the Build that asks for it.
type rbBuild struct {
	attr   string
	name   string // the Build's, as kubectl-guixfarm submit named it
	drv    string
	outs   map[string]string // output name -> path
	inputs []string          // input .drv paths
}

// rbFarm is the farm on real parts: MinIO, a submitter nix-daemon where the derivations are
// instantiated and which kubectl-guixfarm submits from, two agents (the real binary, --builder
// daemon), each with its own nix-daemon substituting from the bucket, later an agent whose daemon
// is absent, and the controller (derivation-ordered) reading .drv files from the bucket.
type rbFarm struct {
	ns, kc    string
	minio     *testbed.MinIO
	cfg       bucket.Config // admin credentials, no keys
	pub       *bucket.Publisher
	reader    *bucket.Reader // verifies the farm's signature
	bucketURL string
	nixPub    string
	keyFiles  []string
	submit    *testbed.NixDaemon
	bb        string
	flakyDir  string
	daemons   map[string]*testbed.NixDaemon // agent name -> its daemon
	agents    map[string]*farm.AgentProcess
	nonce     string
	facts     *drvsource.FactsCache // the controller's, reading .drv files from the bucket
	ctrl      *farm.Controller      // the in-process controller
	ctrlLog   *rbLog                // its log
	owner     *availability.Owner   // the controller's (of its first start)
	plugin    string                // kubectl-guixfarm
	builds    map[string]*rbBuild   // by attr
	// publisherURL is the controller's publisher service, when it serves one (withPublisher).
	publisherURL string
}

const (
	rbBucket   = "farm"
	rbSick     = "agent-sick"
	rbLease    = 6 * time.Second
	rbSystem   = "x86_64-linux"
	rbCancelIn = 10 * time.Second
	rbLate     = 8 // builds submitted once the sick agent is up
)

var rbAgents = []string{"agent-a", "agent-b"}

// TestRealBuild: the farm builds real derivations end to end, submitted with the real
// kubectl-guixfarm and built by real agents through nix-daemons. A DAG (a chain, a fan-in, a
// multi-output and a fixed-output derivation, a 64 MiB output, a 100k-line log with invalid UTF-8)
// succeeds with every output's narinfo signed in the bucket carrying the NarHash the building
// daemon reports; a fresh nix-daemon substitutes the chain's top, refusing it under a wrong key
// and once its nar is corrupted; a flaky build succeeds on retry, a failing one ends Failed with
// its log; a timeout ends TimedOut; a cancel stops the builder within 10 s publishing nothing;
// SIGKILL of an agent mid-build moves the build to the other agent; an agent without its daemon
// offers no slots and gets no attempt; no narinfo in the bucket lacks its nar.
func TestRealBuild(t *testing.T) {
	start := time.Now()
	f := startRealFarm(t)
	f.instantiate(t)
	t.Logf("farm up, derivations instantiated after %s", time.Since(start).Round(100*time.Millisecond))

	dag := []string{"chain0", "chain1", "chain2", "fanin", "multi", "fixed", "big", "noisy"}
	for i := range 10 {
		dag = append(dag, fmt.Sprintf("leaf%d", i))
	}
	// Submitted with the real plugin before any agent is up, so the retry policies the plugin
	// cannot set are patched in before an attempt runs.
	f.submitBuilds(t, nil, slices.Concat(dag, []string{"flaky", "failing", "canceled"})...)
	f.submitBuilds(t, []string{"--timeout", "2"}, "timesout")
	f.setRetry(t, "flaky", 3, 1)
	f.setRetry(t, "failing", 1, 1)
	f.startAgents(t)
	t.Logf("agents up after %s", time.Since(start).Round(100*time.Millisecond))

	// Everything above builds at once; the subtests check it in turn, the cancel first (it must
	// land while its builder sleeps).
	t.Run("cancel stops the builder within 10s, nothing published", func(t *testing.T) {
		token := "token-cancel-" + f.nonce
		var agent string
		waitFor(t, 2*time.Minute, "the canceled build's builder to run", func() (bool, string) {
			b := f.byAttr(t, "canceled")
			if b.Status.Attempt != nil && builderRunning(token) {
				agent = b.Status.Attempt.Agent
				return true, ""
			}
			return false, rbState(b)
		})
		b := f.byAttr(t, "canceled")
		patch := client.MergeFrom(b.DeepCopy())
		b.Spec.Canceled = true
		if err := env.Client.Patch(context.Background(), b, patch); err != nil {
			t.Fatal(err)
		}
		canceledAt := time.Now()
		waitFor(t, rbCancelIn, "the build to end Canceled", func() (bool, string) {
			b := f.byAttr(t, "canceled")
			return b.Status.Phase == farmv1.BuildCanceled, rbState(b)
		})
		took := time.Since(canceledAt)
		waitFor(t, rbCancelIn-took, "the builder process to be gone", func() (bool, string) {
			return !builderRunning(token), "a process still runs the canceled builder"
		})
		t.Logf("canceled on %s: Canceled after %s, builder gone after %s", agent, took.Round(10*time.Millisecond), time.Since(canceledAt).Round(10*time.Millisecond))
		b = f.byAttr(t, "canceled")
		if n := len(b.Status.Attempts); n == 0 || b.Status.Attempts[n-1].Result != farmv1.AttemptCanceled {
			t.Errorf("canceled build's attempts: %+v; want the last one Canceled", b.Status.Attempts)
		}
		f.noNarInfo(t, "canceled")
	})

	t.Run("timeout ends TimedOut", func(t *testing.T) {
		b := f.waitPhase(t, 2*time.Minute, "timesout", farmv1.BuildFailed)
		if b.Spec.TimeoutSeconds == nil || *b.Spec.TimeoutSeconds != 2 {
			t.Errorf("submit --timeout 2 set spec.timeoutSeconds %v", b.Spec.TimeoutSeconds)
		}
		c := meta.FindStatusCondition(b.Status.Conditions, farmv1.BuildConditionSucceeded)
		if c == nil || c.Reason != farmv1.ReasonTimedOut || b.Status.AttemptCount != 1 {
			t.Errorf("times-out: condition %+v after %d attempts; want reason TimedOut after 1", c, b.Status.AttemptCount)
		}
		if len(b.Status.Attempts) == 1 {
			a := b.Status.Attempts[0]
			if d := a.End.Sub(a.Start.Time); a.Reason != farmv1.ReasonTimedOut || d > 30*time.Second {
				t.Errorf("attempt %+v took %s; want TimedOut well before the 60 s sleep ends", a, d)
			}
		}
		f.noNarInfo(t, "timesout")
	})

	t.Run("failing build ends Failed with its log", func(t *testing.T) {
		b := f.waitPhase(t, 2*time.Minute, "failing", farmv1.BuildFailed)
		c := meta.FindStatusCondition(b.Status.Conditions, farmv1.BuildConditionSucceeded)
		if b.Status.AttemptCount != 1 || c == nil || c.Reason != farmv1.ReasonRetriesExceeded {
			t.Errorf("always-fails: %d attempts, condition %+v; want 1 and RetriesExceeded", b.Status.AttemptCount, c)
		}
		if len(b.Status.Attempts) != 1 || !strings.Contains(b.Status.Attempts[0].Message, "going to fail for good") {
			t.Errorf("attempt message lacks the log's last lines: %+v", b.Status.Attempts)
		}
		for _, n := range []int{0, 1} {
			if log := f.readLog(t, b.Spec.Derivation, n); !strings.Contains(log, "going to fail for good") {
				t.Errorf("log %d in the bucket: %q", n, log)
			}
		}
		f.noNarInfo(t, "failing")
	})

	t.Run("flaky build succeeds on retry, first attempt's log kept", func(t *testing.T) {
		f.waitSucceeded(t, 2*time.Minute, "flaky")
		b := f.byAttr(t, "flaky")
		if b.Status.AttemptCount != 2 || len(b.Status.Attempts) != 2 || b.Status.Attempts[0].Result != farmv1.AttemptFailed {
			t.Fatalf("flaky: %d attempts %+v; want a failed one then a success", b.Status.AttemptCount, b.Status.Attempts)
		}
		if m := b.Status.Attempts[0].Message; !strings.Contains(m, "flaky: failing the first attempt") {
			t.Errorf("first attempt's message lacks the log's last lines: %q", m)
		}
		if log := f.readLog(t, b.Spec.Derivation, 1); !strings.Contains(log, "flaky: failing the first attempt") {
			t.Errorf("attempt 1's log in the bucket: %q", log)
		}
		f.checkOutputs(t, "flaky")
	})

	t.Run("DAG succeeds, NarHashes agree", func(t *testing.T) {
		f.waitSucceeded(t, 3*time.Minute, dag...)
		for _, a := range dag {
			f.checkOutputs(t, a)
		}
		// The fan-in's output names all ten leaves and holds their content.
		fan := f.builds["fanin"].outs["out"]
		d := f.daemons[f.builtBy(t, "fanin")]
		deps, _ := os.ReadFile(filepath.Join(d.HostPath(fan), "deps"))
		all, _ := os.ReadFile(filepath.Join(d.HostPath(fan), "all"))
		for i := range 10 {
			if !strings.Contains(string(deps), f.builds[fmt.Sprintf("leaf%d", i)].outs["out"]) || !strings.Contains(string(all), fmt.Sprintf("leaf %d\n", i)) {
				t.Errorf("fan-in lacks leaf %d: deps %q all %q", i, deps, all)
			}
		}
		// Multi-output: out refers to lib.
		ni := f.narinfo(t, f.builds["multi"].outs["out"])
		if !slices.Contains(ni.References, filepath.Base(f.builds["multi"].outs["lib"])) {
			t.Errorf("multi's out narinfo references %v, want lib %s", ni.References, f.builds["multi"].outs["lib"])
		}
		// Fixed-output: content as promised, CA in the narinfo.
		fx := f.builds["fixed"].outs["out"]
		if data, _ := os.ReadFile(f.daemons[f.builtBy(t, "fixed")].HostPath(fx)); string(data) != fixedContent {
			t.Errorf("fixed output holds %q", data)
		}
		if ni := f.narinfo(t, fx); !strings.HasPrefix(ni.CA, "fixed:sha256:") {
			t.Errorf("fixed output's narinfo CA %q, want fixed:sha256:…", ni.CA)
		}
		// 64 MiB: half random, half zeros: compressed, but not below the random half.
		bi := f.narinfo(t, f.builds["big"].outs["out"])
		if bi.NarSize < 64<<20 || bi.FileSize < 32<<20 || bi.FileSize >= bi.NarSize*3/4 {
			t.Errorf("big output: NarSize %d, FileSize %d (%s); want ≥ 64 MiB, a file between 32 MiB and 3/4 of it", bi.NarSize, bi.FileSize, bi.Compression)
		}
	})

	t.Run("log of 100k lines with invalid UTF-8 in the bucket", func(t *testing.T) {
		f.waitSucceeded(t, time.Minute, "noisy")
		log := f.readLog(t, f.builds["noisy"].drv, 0)
		if !strings.Contains(log, "not utf-8: \xff\n") {
			t.Errorf("log lacks the invalid UTF-8 line (%d bytes)", len(log))
		}
		if n := strings.Count(log, "\n"); n < 100001 || !strings.Contains(log, "\n1\n2\n3\n") || !strings.Contains(log, "\n99999\n100000\n") {
			t.Errorf("log has %d lines; want the 100000 of seq (tail %q)", n, rbTail(log, 200))
		}
	})

	t.Run("fresh daemon substitutes the chain's top, refuses a wrong key and a corrupt nar", func(t *testing.T) {
		f.waitSucceeded(t, time.Minute, "chain0", "chain1", "chain2")
		f.substitution(t)
	})

	// Only once everything else has finished: a pause or a kill must hit one build alone.
	allFinished := func(t *testing.T) {
		waitFor(t, 2*time.Minute, "every other build to finish", func() (bool, string) {
			bs := listBuilds(t, f.ns)
			for _, b := range bs {
				if !b.Status.Phase.Finished() {
					return false, fmt.Sprintf("%s: %s; phases %v", b.Name, rbState(&b), phases(bs))
				}
			}
			return true, ""
		})
	}
	t.Run("agent paused past its Lease term: the other attempt wins, the paused one publishes nothing", func(t *testing.T) {
		allFinished(t)
		f.pauseAgent(t)
	})
	t.Run("agent killed mid-build: the other agent builds it", func(t *testing.T) {
		allFinished(t)
		f.killAgent(t)
	})

	t.Run("agent without its daemon offers no slots, gets no attempt", func(t *testing.T) { f.checkSick(t) })
	t.Run("every narinfo's nar exists", func(t *testing.T) { f.checkBucket(t, 30) })
	t.Logf("TestRealBuild ran %s", time.Since(start).Round(100*time.Millisecond))
}

// startRealFarm starts the farm but its agents: MinIO with the bucket, the signing keys, the
// submitter's daemon (with busybox) and the agents' daemons, the controller and the plugin. What
// it builds is the caller's to instantiate (instantiate, for realDAG).
func startRealFarm(t testing.TB, tweak ...func(f *rbFarm, o *farm.ControllerOptions)) *rbFarm {
	return startRealFarmWith(t, rbOptions{}, tweak...)
}

// rbOptions vary startRealFarm.
type rbOptions struct {
	// Agents names the agents whose daemons are started (default rbAgents).
	Agents []string
	// DaemonConf is the extra nix.conf of an agent's daemon (default: the flaky directory bound
	// into its sandbox).
	DaemonConf func(agent string) string
	// ControllerErrorsOK: the controller's manager may return errors (faults injected).
	ControllerErrorsOK bool
	// ControllerVerbosity is the verbosity of the controller's log (kept, printed if the test fails).
	ControllerVerbosity int
}

func startRealFarmWith(t testing.TB, o rbOptions, tweak ...func(f *rbFarm, o *farm.ControllerOptions)) *rbFarm {
	t.Helper()
	if o.Agents == nil {
		o.Agents = rbAgents
	}
	ctx := context.Background()
	f := &rbFarm{daemons: map[string]*testbed.NixDaemon{}, agents: map[string]*farm.AgentProcess{}, builds: map[string]*rbBuild{},
		nonce: strconv.FormatInt(time.Now().UnixNano(), 36)}
	f.minio = testbed.StartMinIO(t)
	f.cfg = bucket.Config{Endpoint: f.minio.Endpoint, Bucket: rbBucket, AccessKey: f.minio.AccessKey, SecretKey: f.minio.SecretKey}
	f.bucketURL = f.minio.BucketURL(rbBucket)

	keys, err := keygen.Generate(keygen.Options{Name: "farm-test-1", Dir: filepath.Join(t.TempDir(), "keys")})
	if err != nil {
		t.Fatal(err)
	}
	f.nixPub = keys.NixPublic.String()
	f.keyFiles = []string{keys.Files[signing.SecretDataNixKey], keys.Files[signing.SecretDataGuixKey]}
	pcfg := f.cfg
	pcfg.KeyFiles = f.keyFiles
	if f.pub, err = bucket.NewPublisher(pcfg); err != nil {
		t.Fatal(err)
	}
	if err := f.pub.EnsureBucket(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.pub.EnsureCacheInfo(ctx); err != nil {
		t.Fatal(err)
	}
	if f.reader, err = bucket.NewReader(f.cfg, bucket.ReaderOptions{TrustedNixKeys: []signing.NixPublicKey{keys.NixPublic}}); err != nil {
		t.Fatal(err)
	}

	// The flaky derivation's marker directory, bound into both agents' sandboxes.
	f.flakyDir = t.TempDir()
	if err := os.Chmod(f.flakyDir, 0o777); err != nil {
		t.Fatal(err)
	}
	f.submit = testbed.StartNixDaemon(t, testbed.NixOptions{})
	f.bb = f.submit.AddBusybox(t)
	for _, a := range o.Agents {
		conf := "extra-sandbox-paths = /flaky=" + f.flakyDir + "\n"
		if o.DaemonConf != nil {
			conf = o.DaemonConf(a)
		}
		f.daemons[a] = testbed.StartNixDaemon(t, testbed.NixOptions{Substituters: []string{f.bucketURL},
			TrustedPublicKeys: []string{f.nixPub}, ExtraConf: conf})
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for name, d := range f.daemons {
			t.Logf("nix-daemon of %s:\n%s", name, rbTail(d.Logs(), 4000))
		}
		t.Logf("submitter's nix-daemon:\n%s", rbTail(f.submit.Logs(), 2000))
		t.Logf("minio:\n%s", rbTail(f.minio.Logs(), 2000))
	})

	// The controller reads .drv files and output availability from the bucket, as the real binary
	// does with --bucket-endpoint/--bucket and no --drv-dir.
	f.ns = env.Namespace(t, "realbuild")
	ccfg := f.cfg
	ccfg.AllowUnsigned = true
	creader, err := bucket.NewReader(ccfg, bucket.ReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctrlLog := &rbLog{}
	f.ctrlLog = ctrlLog
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("controller log:\n%s", rbTail(ctrlLog.String(), 8000))
		}
	})
	f.facts = drvsource.NewFactsCache(creader, 1000)
	copts := farm.ControllerOptions{Strategy: planner.DerivationOrdered,
		Facts: f.facts, Bucket: creader, ManagerErrorsOK: o.ControllerErrorsOK,
		Log: funcr.New(func(prefix, args string) {
			fmt.Fprintf(ctrlLog, "%s %s %s\n", time.Now().Format("15:04:05.000"), prefix, args)
		}, funcr.Options{Verbosity: o.ControllerVerbosity})}
	for _, fn := range tweak {
		fn(f, &copts)
	}
	f.ctrl = env.RunController(t, f.ns, "", copts)
	f.owner = f.ctrl.Farm().Availability

	f.kc = env.Kubeconfig(t)
	f.plugin = pluginBinary(t)
	return f
}

// startAgents starts the two healthy agents.
func (f *rbFarm) startAgents(t testing.TB) { f.startAgentsWith(t, nil) }

// startAgentsWith starts the two healthy agents, their specs changed by change (when not nil).
func (f *rbFarm) startAgentsWith(t testing.TB, change func(*farm.DaemonAgentSpec)) {
	t.Helper()
	// Nix 2.8 races when two daemon workers first open the same binary cache at once: one of them
	// fails with "executing SQLite statement 'insert or replace into NARs…': constraint failed"
	// (its narinfo disk cache), which the agent reports as a failed setup, spending an attempt.
	// One substitution (busybox, which the submission put in the bucket) per agent daemon before
	// the agents start makes the attempt counts below deterministic.
	for _, a := range rbAgents {
		f.daemons[a].MustRun(t, "nix-store", "--realise", f.bb)
	}
	for _, a := range rbAgents {
		spec := f.agentSpec(a, f.daemons[a].Socket)
		if change != nil {
			change(&spec)
		}
		f.agents[a] = env.StartDaemonAgent(t, f.kc, f.ns, spec)
	}
}

func (f *rbFarm) agentSpec(name, socket string) farm.DaemonAgentSpec {
	return farm.DaemonAgentSpec{Name: name, Systems: []string{rbSystem}, Slots: 2, LeaseDuration: rbLease,
		DaemonSocket: socket, BucketEndpoint: f.minio.Endpoint, Bucket: rbBucket,
		AccessKey: f.minio.AccessKey, SecretKey: f.minio.SecretKey,
		SigningKeys: f.keyFiles, TrustedPublicKeys: []string{f.nixPub}}
}

// rbState is what a waiting message says of b.
func rbState(b *farmv1.Build) string {
	s := fmt.Sprintf("%s (%d attempts", b.Status.Phase, b.Status.AttemptCount)
	if b.Status.Allocation != nil {
		s += ", allocated to " + b.Status.Allocation.Agent
	}
	if b.Status.Attempt != nil {
		s += ", running on " + b.Status.Attempt.Agent
	}
	return s + ")"
}

// instantiate writes realDAG and instantiates every attribute in the submitter's store.
func (f *rbFarm) instantiate(t *testing.T) {
	t.Helper()
	file := filepath.Join(f.submit.Root, "dag.nix")
	if err := os.WriteFile(file, []byte(realDAG), 0o644); err != nil {
		t.Fatal(err)
	}
	attrs := []string{"chain0", "chain1", "chain2", "fanin", "multi", "fixed", "big", "noisy", "flaky", "failing",
		"timesout", "canceled", "victim", "paused", "gated", "afterGated"}
	for i := range 10 {
		attrs = append(attrs, fmt.Sprintf("leaf%d", i))
	}
	for i := range rbLate {
		attrs = append(attrs, fmt.Sprintf("late%d", i))
	}
	args := []string{"nix-instantiate", file, "--argstr", "bb", f.bb, "--argstr", "nonce", f.nonce,
		"--argstr", "fixedHash", fmt.Sprintf("%x", sha256.Sum256([]byte(fixedContent)))}
	for _, a := range attrs {
		args = append(args, "-A", a)
	}
	out := strings.Fields(f.submit.MustRun(t, args...))
	if len(out) != len(attrs) {
		t.Fatalf("nix-instantiate gave %d paths for %d attributes: %v", len(out), len(attrs), out)
	}
	for i, a := range attrs {
		f.addBuild(t, a, out[i])
	}
}

// addBuild records drv, a derivation in the submitter's store, in f.builds under key.
func (f *rbFarm) addBuild(t testing.TB, key, drv string) {
	t.Helper()
	data, err := os.ReadFile(f.submit.HostPath(drv))
	if err != nil {
		t.Fatal(err)
	}
	d, err := derivation.Parse(data)
	if err != nil {
		t.Fatalf("%s: %v", drv, err)
	}
	f.builds[key] = &rbBuild{attr: key, drv: drv, outs: d.OutputPaths(), inputs: d.InputDerivations()}
}

// submitBuilds runs `kubectl-guixfarm submit` on the derivations of attrs: it publishes their
// .drv closures from the submitter's daemon to the bucket and creates one Build each, whose
// names it prints. With --all-missing among flags it also creates the Builds of inputs, which
// must be in f.builds too.
func (f *rbFarm) submitBuilds(t testing.TB, flags []string, attrs ...string) {
	t.Helper()
	args := []string{"--kubeconfig", f.kc, "-n", f.ns, "submit", "--daemon-socket", f.submit.Socket,
		"--bucket-endpoint", f.minio.URL, "--bucket", rbBucket, "--signing-keys", strings.Join(f.keyFiles, ",")}
	args = append(args, flags...)
	byDrv := map[string]*rbBuild{} // those of attrs: each must get its line
	known := map[string]*rbBuild{} // those a line may name
	for _, a := range attrs {
		args = append(args, f.builds[a].drv)
		byDrv[f.builds[a].drv] = f.builds[a]
		known[f.builds[a].drv] = f.builds[a]
	}
	if slices.Contains(flags, "--all-missing") {
		for _, rb := range f.builds {
			known[rb.drv] = rb
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.plugin, args...)
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+f.minio.AccessKey, "AWS_SECRET_ACCESS_KEY="+f.minio.SecretKey)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl-guixfarm submit: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		fs := strings.Fields(line)
		if len(fs) != 3 || fs[1] != "created" || known[fs[2]] == nil || !strings.HasPrefix(fs[0], "build/") {
			t.Fatalf("kubectl-guixfarm submit printed %q; want build/<name> created <drv> for %v", line, attrs)
		}
		known[fs[2]].name = strings.TrimPrefix(fs[0], "build/")
		delete(byDrv, fs[2])
	}
	if len(byDrv) > 0 {
		t.Fatalf("kubectl-guixfarm submit created no Build for %d derivations:\n%s\nstderr:\n%s", len(byDrv), stdout.String(), stderr.String())
	}
}

// setRetry sets the retry policy of attr's Build (the plugin has no flag for it).
func (f *rbFarm) setRetry(t *testing.T, attr string, maxAttempts, backoffSeconds int32) {
	t.Helper()
	b := f.byAttr(t, attr)
	patch := client.MergeFrom(b.DeepCopy())
	b.Spec.Retry = &farmv1.RetryPolicy{MaxAttempts: maxAttempts, BackoffSeconds: backoffSeconds, MaxBackoffSeconds: 60}
	if err := env.Client.Patch(context.Background(), b, patch); err != nil {
		t.Fatalf("setting the retry policy of %s: %v", b.Name, err)
	}
}

func (f *rbFarm) byAttr(t testing.TB, attr string) *farmv1.Build {
	t.Helper()
	return f.get(t, f.builds[attr].name)
}

func (f *rbFarm) get(t testing.TB, name string) *farmv1.Build {
	t.Helper()
	b := &farmv1.Build{}
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: name}, b); err != nil {
		t.Fatalf("getting build %s: %v", name, err)
	}
	return b
}

// waitSucceeded waits for the Builds of attrs to succeed, failing at once if one ends otherwise.
func (f *rbFarm) waitSucceeded(t *testing.T, timeout time.Duration, attrs ...string) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%d builds to succeed", len(attrs)), func() (bool, string) {
		var waiting []string
		for _, a := range attrs {
			b := f.get(t, f.builds[a].name)
			switch b.Status.Phase {
			case farmv1.BuildSucceeded:
				continue
			case farmv1.BuildFailed, farmv1.BuildCanceled:
				t.Fatalf("build %s ended %s: %+v", b.Name, b.Status.Phase, b.Status)
			}
			waiting = append(waiting, b.Name+" "+rbState(b))
		}
		return len(waiting) == 0, strings.Join(waiting, ", ")
	})
}

func (f *rbFarm) waitPhase(t *testing.T, timeout time.Duration, attr string, phase farmv1.BuildPhase) *farmv1.Build {
	t.Helper()
	var b *farmv1.Build
	waitFor(t, timeout, fmt.Sprintf("build %s to end %s", f.builds[attr].name, phase), func() (bool, string) {
		b = f.byAttr(t, attr)
		if b.Status.Phase.Finished() && b.Status.Phase != phase {
			t.Fatalf("build %s ended %s: %+v", b.Name, b.Status.Phase, b.Status)
		}
		return b.Status.Phase == phase, rbState(b)
	})
	return b
}

// builtBy is the agent whose attempt succeeded.
func (f *rbFarm) builtBy(t *testing.T, attr string) string {
	t.Helper()
	b := f.get(t, f.builds[attr].name)
	for i := len(b.Status.Attempts) - 1; i >= 0; i-- {
		if a := b.Status.Attempts[i]; a.Result == farmv1.AttemptSucceeded {
			if f.daemons[a.Agent] == nil {
				t.Fatalf("build %s succeeded on %s, not a daemon agent", b.Name, a.Agent)
			}
			return a.Agent
		}
	}
	t.Fatalf("build %s has no successful attempt: %+v", b.Name, b.Status.Attempts)
	return ""
}

func (f *rbFarm) narinfo(t *testing.T, path string) *narinfo.NarInfo {
	t.Helper()
	ni, err := f.reader.NarInfo(context.Background(), path)
	if err != nil {
		t.Fatalf("narinfo of %s: %v", path, err)
	}
	return ni
}

// checkOutputs: every output of attr's Build carries a NarHash in status.outputs, its narinfo is
// in the bucket signed by the farm's key with that NarHash, and the daemon that built it says so.
func (f *rbFarm) checkOutputs(t *testing.T, attr string) {
	t.Helper()
	rb := f.builds[attr]
	b := f.get(t, rb.name)
	d := f.daemons[f.builtBy(t, attr)]
	if len(b.Status.Outputs) != len(rb.outs) {
		t.Errorf("build %s: status.outputs %+v, want %v", b.Name, b.Status.Outputs, rb.outs)
	}
	for _, o := range b.Status.Outputs {
		if rb.outs[o.Name] != o.Path {
			t.Errorf("build %s: output %s is %s, the .drv says %s", b.Name, o.Name, o.Path, rb.outs[o.Name])
		}
		want := d.MustRun(t, "nix-store", "-q", "--hash", o.Path)
		if o.NarHash != want {
			t.Errorf("build %s: status.outputs[%s].narHash %q, the daemon says %q", b.Name, o.Name, o.NarHash, want)
		}
		if ni := f.narinfo(t, o.Path); ni.NarHash != want {
			t.Errorf("build %s: narinfo of %s says NarHash %s, the daemon %s", b.Name, o.Path, ni.NarHash, want)
		}
	}
}

// noNarInfo: no output of attr's derivation has a narinfo.
func (f *rbFarm) noNarInfo(t *testing.T, attr string) {
	t.Helper()
	for name, p := range f.builds[attr].outs {
		if _, err := f.reader.NarInfo(context.Background(), p); !errors.Is(err, bucket.ErrNotFound) {
			t.Errorf("output %s (%s) of %s: narinfo lookup gave %v; want none", name, p, attr, err)
		}
	}
}

func (f *rbFarm) readLog(t *testing.T, drv string, attempt int) string {
	t.Helper()
	r, err := f.reader.OpenLog(context.Background(), drv, attempt)
	if err != nil {
		t.Fatalf("log %d of %s: %v", attempt, drv, err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading log %d of %s: %v", attempt, drv, err)
	}
	return string(data)
}

// substitution: a fresh nix-daemon trusting the farm's key realises the chain's top (and so the
// whole chain) from the bucket; one trusting another key refuses it; once the top's nar object is
// garbage, another fresh daemon refuses it too.
func (f *rbFarm) substitution(t *testing.T) {
	top := f.builds["chain2"].outs["out"]
	mid := f.builds["chain1"].outs["out"]
	fresh := func(key string) *testbed.NixDaemon {
		return testbed.StartNixDaemon(t, testbed.NixOptions{Substituters: []string{f.bucketURL}, TrustedPublicKeys: []string{key}})
	}
	realise := func(d *testbed.NixDaemon) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := d.Run(ctx, "nix-store", "--realise", top)
		return err
	}
	good := fresh(f.nixPub)
	if err := realise(good); err != nil {
		t.Fatalf("substituting %s with the farm's key trusted: %v", top, err)
	}
	if v, err := os.ReadFile(filepath.Join(good.HostPath(top), "v")); err != nil || string(v) != "chain-0\nchain-1\nchain-2\n" {
		t.Errorf("substituted %s/v: %q %v", top, v, err)
	}
	if dep, err := os.ReadFile(filepath.Join(good.HostPath(top), "dep")); err != nil || strings.TrimSpace(string(dep)) != mid {
		t.Errorf("substituted %s/dep: %q %v", top, dep, err)
	}
	if _, err := os.Stat(good.HostPath(mid)); err != nil {
		t.Errorf("the chain's middle was not substituted with the top: %v", err)
	}

	other, err := signing.GenerateNixKey(rand.Reader, "not-the-farm-1")
	if err != nil {
		t.Fatal(err)
	}
	wrong := fresh(other.Public().String())
	if err := realise(wrong); err == nil {
		t.Errorf("a daemon trusting another key substituted %s", top)
	} else {
		t.Logf("wrong key refused: %s", rbLastLines(err.Error(), 3))
	}
	if _, err := os.Stat(wrong.HostPath(top)); err == nil {
		t.Errorf("%s is in the store of the daemon trusting another key", top)
	}

	ni := f.narinfo(t, top)
	garbage := bytes.Repeat([]byte("this is not a nar "), 1000)
	if _, err := f.minio.Client.PutObject(context.Background(), rbBucket, ni.URL, bytes.NewReader(garbage), int64(len(garbage)), minio.PutObjectOptions{}); err != nil {
		t.Fatalf("overwriting %s: %v", ni.URL, err)
	}
	corrupt := fresh(f.nixPub)
	if err := realise(corrupt); err == nil {
		t.Errorf("a fresh daemon substituted %s from the corrupted nar %s", top, ni.URL)
	} else {
		t.Logf("corrupt nar refused: %s", rbLastLines(err.Error(), 3))
	}
	if _, err := os.Stat(corrupt.HostPath(top)); err == nil {
		t.Errorf("%s is in the store of the daemon that read the corrupted nar", top)
	}
}

// runVictim submits attr (a build whose builder prints token-<attr>-<nonce> and sleeps) and
// returns the agent process once the builder runs.
func (f *rbFarm) runVictim(t *testing.T, attr string) (string, *farm.AgentProcess) {
	rb := f.builds[attr]
	f.submitBuilds(t, nil, attr)
	f.setRetry(t, attr, 3, 1) // read when the attempt is lost, long after this
	token := "token-" + attr + "-" + f.nonce
	var victim string
	waitFor(t, 2*time.Minute, "the build's builder to run", func() (bool, string) {
		b := f.get(t, rb.name)
		if b.Status.Attempt != nil && builderRunning(token) {
			victim = b.Status.Attempt.Agent
			return true, ""
		}
		return false, rbState(b)
	})
	p := f.agents[victim]
	if p == nil || victim == rbSick {
		t.Fatalf("the build runs on %q", victim)
	}
	return victim, p
}

// pauseAgent submits a build sleeping 6 s whose output is random (so whose narinfo says which
// attempt published it), SIGSTOPs the agent running it past its Lease term, and waits for the
// other agent's attempt to succeed. Then it resumes the paused agent, whose own build has finished
// meanwhile in its daemon: the agent must find its term ended and publish and report nothing.
func (f *rbFarm) pauseAgent(t *testing.T) {
	rb := f.builds["paused"]
	victim, p := f.runVictim(t, "paused")
	if err := p.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	pausedAt := time.Now()
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = p.Cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	defer resume()
	f.waitSucceeded(t, 2*time.Minute, "paused")
	survivor := f.builtBy(t, "paused")
	if survivor == victim {
		t.Fatalf("the build succeeded on the paused agent %s", victim)
	}
	before := f.get(t, rb.name)
	out := rb.outs["out"]
	want := f.daemons[survivor].MustRun(t, "nix-store", "-q", "--hash", out)
	waitFor(t, time.Minute, "the paused agent's daemon to finish its build", func() (bool, string) {
		return !builderRunning("token-paused-" + f.nonce), "builder still running"
	})
	resume()
	resumedAt := time.Now()
	waitFor(t, 30*time.Second, "the resumed agent to end its old term", func() (bool, string) {
		return strings.Contains(p.Log(t), "Lease term ended"), "no \"Lease term ended\" in its log yet"
	})
	time.Sleep(2 * time.Second) // room for a wrongful publication or report to land
	after := f.get(t, rb.name)
	t.Logf("paused %s at %s for %s; built on %s", victim, pausedAt.Format("15:04:05.000"), resumedAt.Sub(pausedAt).Round(100*time.Millisecond), survivor)
	for _, a := range after.Status.Attempts {
		t.Logf("  attempt on %s %s–%s: %s %s %s", a.Agent, a.Start.Format("15:04:05"), a.End.Format("15:04:05"), a.Result, a.Reason, a.Message)
	}
	if after.ResourceVersion != before.ResourceVersion {
		t.Errorf("the Build was written after the paused agent resumed: %s", rbState(after))
	}
	if ni := f.narinfo(t, out); ni.NarHash != want {
		t.Errorf("narinfo of %s says NarHash %s; the winning attempt's daemon %s: the paused attempt published", out, ni.NarHash, want)
	}
	if own, err := f.daemons[victim].Run(context.Background(), "nix-store", "-q", "--hash", out); err == nil && strings.TrimSpace(string(own)) == want {
		t.Errorf("the paused agent's daemon built the same random output %s: the test proves nothing", own)
	}
	f.checkOutputs(t, "paused")
}

// killAgent submits a build sleeping 8 s, SIGKILLs the agent running its builder, and waits for
// the other agent to build it.
func (f *rbFarm) killAgent(t *testing.T) {
	rb := f.builds["victim"]
	victim, p := f.runVictim(t, "victim")
	p.Kill()
	killedAt := time.Now()
	f.waitSucceeded(t, 2*time.Minute, "victim")
	b := f.get(t, rb.name)
	survivor := f.builtBy(t, "victim")
	t.Logf("killed %s at %s; built on %s %s later", victim, killedAt.Format("15:04:05.000"), survivor, time.Since(killedAt).Round(100*time.Millisecond))
	for _, a := range b.Status.Attempts {
		t.Logf("  attempt on %s %s–%s: %s %s %s", a.Agent, a.Start.Format("15:04:05"), a.End.Format("15:04:05"), a.Result, a.Reason, a.Message)
	}
	if survivor == victim {
		t.Errorf("the build succeeded on the killed agent %s", victim)
	}
	lost := false
	for _, a := range b.Status.Attempts {
		lost = lost || a.Agent == victim && a.Reason == farmv1.ReasonAgentLost
	}
	if !lost {
		t.Errorf("no attempt on %s recorded as AgentLost: %+v", victim, b.Status.Attempts)
	}
	f.checkOutputs(t, "victim")
	if data, _ := os.ReadFile(f.daemons[survivor].HostPath(rb.outs["out"])); string(data) != "survived\n" {
		t.Errorf("output holds %q", data)
	}
}

// checkBucket: every narinfo in the bucket names a nar object that exists (and a client reading
// the narinfo finds the nar), and there are at least atLeast of them.
func (f *rbFarm) checkBucket(t *testing.T, atLeast int) {
	ctx := context.Background()
	n := 0
	for o := range f.minio.Client.ListObjects(ctx, rbBucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		if !strings.HasSuffix(o.Key, ".narinfo") {
			continue
		}
		n++
		obj, err := f.minio.Client.GetObject(ctx, rbBucket, o.Key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(obj)
		obj.Close()
		if err != nil {
			t.Fatal(err)
		}
		ni, err := narinfo.Parse(data)
		if err != nil {
			t.Errorf("%s: %v", o.Key, err)
			continue
		}
		if _, err := f.minio.Client.StatObject(ctx, rbBucket, ni.URL, minio.StatObjectOptions{}); err != nil {
			t.Errorf("%s (%s) names nar %s: %v", o.Key, ni.StorePath, ni.URL, err)
		}
	}
	if n < atLeast {
		t.Errorf("only %d narinfos in the bucket, want at least %d", n, atLeast)
	}
	t.Logf("%d narinfos, each with its nar", n)
}

// checkSick: an agent whose daemon is absent says so on its Lease (no free slots, why it is
// unhealthy); of the Builds submitted while it is up, none is allocated to it, none has an attempt
// on it, and all succeed on the healthy agent.
func (f *rbFarm) checkSick(t *testing.T) {
	sick := env.StartDaemonAgent(t, f.kc, f.ns, f.agentSpec(rbSick, filepath.Join(t.TempDir(), "no-daemon", "socket")))
	var l coordinationv1.Lease
	waitFor(t, 30*time.Second, "the sick agent's Lease", func() (bool, string) {
		if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: rbSick}, &l); err != nil {
			return false, err.Error()
		}
		return l.Annotations[agentlease.AnnotationFreeSlots] == "0" && l.Annotations[agentlease.AnnotationUnhealthy] != "",
			fmt.Sprint(l.Annotations)
	})
	t.Logf("%s: free slots %s, unhealthy: %s", rbSick, l.Annotations[agentlease.AnnotationFreeSlots], l.Annotations[agentlease.AnnotationUnhealthy])

	var attrs, names []string
	for i := range rbLate {
		attrs = append(attrs, fmt.Sprintf("late%d", i))
	}
	f.submitBuilds(t, nil, attrs...)
	for _, a := range attrs {
		names = append(names, f.builds[a].name)
	}
	allocated := map[string]bool{} // late Builds ever seen allocated to the sick agent
	waitFor(t, 2*time.Minute, "the late builds to succeed", func() (bool, string) {
		var waiting []string
		for _, n := range names {
			b := f.get(t, n)
			if b.Status.Allocation != nil && b.Status.Allocation.Agent == rbSick {
				allocated[n] = true
			}
			if b.Status.Phase != farmv1.BuildSucceeded {
				waiting = append(waiting, n+" "+rbState(b))
			}
		}
		return len(waiting) == 0 || len(allocated) > 0, strings.Join(waiting, ", ")
	})
	for _, b := range listBuilds(t, f.ns) {
		if b.Status.Attempt != nil && b.Status.Attempt.Agent == rbSick {
			t.Errorf("build %s runs on %s", b.Name, rbSick)
		}
		for _, a := range b.Status.Attempts {
			if a.Agent == rbSick {
				t.Errorf("build %s has an attempt on %s: %+v", b.Name, rbSick, a)
			}
		}
	}
	if log := sick.Log(t); strings.Contains(log, "Build succeeded") || strings.Contains(log, "Build did not succeed") || strings.Contains(log, "Build aborted") {
		t.Errorf("the sick agent ran a build:\n%s", rbTail(log, 2000))
	}
	if len(allocated) > 0 {
		var stuck []string
		for _, n := range names {
			if allocated[n] {
				stuck = append(stuck, n+" "+rbState(f.get(t, n)))
			}
		}
		t.Errorf("the planner allocated Builds to an agent whose Lease says it is unhealthy; they wait there: %s",
			strings.Join(stuck, "; "))
	}
}

// builderRunning says whether a process (a builder in some daemon's sandbox) has token in its
// command line.
func builderRunning(token string) bool { return builderCount(token) > 0 }

// builderCount is the number of processes with token in their command line.
func builderCount(token string) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if c := e.Name()[0]; c < '0' || c > '9' {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && bytes.Contains(data, []byte(token)) {
			n++
		}
	}
	return n
}

type rbLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *rbLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *rbLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func rbTail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func rbLastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}
