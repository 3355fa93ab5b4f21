package farm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/guixfarm/guix-farm/agent"
	"github.com/guixfarm/guix-farm/agent/buildstep"
)

// AgentBinary builds the real agent binary once per test binary.
func AgentBinary(t testing.TB) string { return Binary(t, "guix-farm-agent") }

// AgentProcess is a real agent binary running with the test builder.
type AgentProcess struct {
	Name string
	Cmd  *exec.Cmd
	log  *os.File
	done chan struct{}

	// What started it, for Restart.
	bin         string
	args, env   []string
	logTail     int
	incarnation int
	mu          sync.Mutex
	paused      bool
}

// AgentSpec describes an agent process.
type AgentSpec struct {
	Name, Pool    string
	Systems       []string
	Features      []string
	Slots         int
	TestDuration  time.Duration
	LeaseDuration time.Duration
	Record        string
}

// StartAgent runs the agent binary; it is stopped (SIGTERM) when the test ends unless killed before.
func (e *Env) StartAgent(t testing.TB, kubeconfig, namespace string, s AgentSpec) *AgentProcess {
	t.Helper()
	bin := AgentBinary(t)
	args := []string{"--kubeconfig", kubeconfig, "--namespace", namespace, "--name", s.Name, "--pool", s.Pool,
		"--systems", strings.Join(s.Systems, ","), "--features", strings.Join(s.Features, ","),
		"--slots", fmt.Sprint(max(s.Slots, 1)), "--builder", "test", "--test-duration", s.TestDuration.String(),
		"--lease-duration", s.LeaseDuration.String(), "--test-record", s.Record}
	return startAgentProcess(t, s.Name, bin, args, nil, 4000)
}

// startAgentProcess runs an agent binary with args (and env added to the test's), logging to a
// file whose last logTail bytes the test prints if it fails; it is stopped when the test ends.
func startAgentProcess(t testing.TB, name, bin string, args, env []string, logTail int) *AgentProcess {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	p := &AgentProcess{Name: name, log: logf, done: make(chan struct{}), bin: bin, args: args, env: env, logTail: logTail}
	p.start(t)
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			data, _ := os.ReadFile(logf.Name())
			t.Logf("agent %s log:\n%s", name, tail(string(data), logTail))
		}
	})
	return p
}

func (p *AgentProcess) start(t testing.TB) {
	t.Helper()
	cmd := exec.Command(p.bin, p.args...)
	if p.env != nil {
		cmd.Env = append(os.Environ(), p.env...)
	}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting agent %s: %v", p.Name, err)
	}
	p.Cmd = cmd
	go func() { _ = cmd.Wait(); close(p.done) }()
}

// Log returns what the agent has logged so far.
func (p *AgentProcess) Log(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile(p.log.Name())
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// Kill sends SIGKILL: no release, no Lease deletion; the controller must notice the loss.
func (p *AgentProcess) Kill() {
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and waits (a paused agent is continued first: SIGTERM would wait for it).
func (p *AgentProcess) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	p.Resume()
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.Kill()
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// StartInProcessAgent runs an agent inside the test process (for benchmarks: no process start-up).
func (e *Env) StartInProcessAgent(t testing.TB, ctx context.Context, cfg agent.Config, b buildstep.Step, log logr.Logger) {
	t.Helper()
	copts := agent.CacheOptions(cfg.Name, cfg.Namespace)
	copts.Scheme = e.Scheme
	c, err := cache.New(e.Config, copts)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(e.Config, client.Options{Scheme: e.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(cfg, agent.Deps{Client: cl, Cache: c, Step: b, Clock: clock.RealClock{}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = c.Start(cctx) }()
	go func() { defer wg.Done(); _ = a.Run(cctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// DaemonAgentSpec describes an agent process that builds through a real daemon (--builder daemon)
// and publishes to the farm's bucket.
type DaemonAgentSpec struct {
	Name, Pool    string
	Systems       []string
	Slots         int
	LeaseDuration time.Duration
	// DaemonSocket is the daemon's Unix socket; a path where no daemon listens makes an agent
	// that is unhealthy from the start.
	DaemonSocket string
	// BucketEndpoint (host:port), Bucket and the credentials (passed as $AWS_ACCESS_KEY_ID and
	// $AWS_SECRET_ACCESS_KEY) of the farm's bucket.
	BucketEndpoint, Bucket, AccessKey, SecretKey string
	// SigningKeys are key files as `guix-farm-controller keygen` writes them (without
	// PublisherURL).
	SigningKeys []string
	// PublisherURL, when set, makes the agent publish through the controller's publisher service
	// (--publisher-url) with the token in TokenFile: then give it neither keys nor credentials.
	PublisherURL, TokenFile string
	// BucketURL is the bucket's public URL (--bucket-url), for an agent without BucketEndpoint.
	BucketURL string
	// TrustedPublicKeys are the Nix public keys the daemon is told to trust (the farm's).
	TrustedPublicKeys []string
	// StoreDir is the daemon's store directory (default /gnu/store).
	StoreDir string
	// Args are further flags.
	Args []string
}

// StartDaemonAgent runs the agent binary with the daemon builder; it is stopped (SIGTERM) when
// the test ends unless killed before, and its log is printed if the test failed.
func (e *Env) StartDaemonAgent(t testing.TB, kubeconfig, namespace string, s DaemonAgentSpec) *AgentProcess {
	t.Helper()
	bin := AgentBinary(t)
	storeDir := s.StoreDir
	if storeDir == "" {
		storeDir = "/gnu/store"
	}
	args := []string{"--kubeconfig", kubeconfig, "--namespace", namespace, "--name", s.Name,
		"--systems", strings.Join(s.Systems, ","), "--slots", fmt.Sprint(max(s.Slots, 1)),
		"--lease-duration", s.LeaseDuration.String(), "--builder", "daemon", "--daemon-socket", s.DaemonSocket,
		"--store-dir", storeDir, "--trusted-public-keys", strings.Join(s.TrustedPublicKeys, ",")}
	if s.BucketEndpoint != "" {
		args = append(args, "--bucket-endpoint", s.BucketEndpoint, "--bucket", s.Bucket)
	}
	if s.BucketURL != "" {
		args = append(args, "--bucket-url", s.BucketURL)
	}
	if len(s.SigningKeys) > 0 {
		args = append(args, "--signing-keys", strings.Join(s.SigningKeys, ","))
	}
	if s.PublisherURL != "" {
		args = append(args, "--publisher-url", s.PublisherURL, "--publisher-token-file", s.TokenFile)
	}
	if s.Pool != "" {
		args = append(args, "--pool", s.Pool)
	}
	args = append(args, s.Args...)
	// Only what the spec gives: an agent of the publisher service runs without credentials.
	env := []string{"AWS_ACCESS_KEY_ID=" + s.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.SecretKey}
	if s.AccessKey == "" && s.SecretKey == "" {
		env = []string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY="}
	}
	return startAgentProcess(t, s.Name, bin, args, env, 8000)
}
