package farm

// Fault injection for tests of the farm's resilience: the apiserver stopped and started again on
// the same address with the same etcd and certificates, agents killed, paused and restarted under
// the same name, the in-process controller stopped and started (Controller in env.go), agents
// partitioned from the apiserver through a proxy (testbed.Proxy). MinIO's are in
// test/testbed/minio.go (Stop, Start, Outage).

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/guixfarm/guix-farm/test/testbed"
)

// StopAPIServer kills the kube-apiserver (SIGKILL, as a crashed control-plane host: in-flight
// requests and watches break; etcd keeps running) and returns once it has exited. Clients see
// connections refused until StartAPIServer. A graceful SIGTERM is not used: with clients holding
// watches the apiserver takes more than envtest's 20 s to drain. If the test ends with it
// stopped, it is started again so that later tests find it.
func (e *Env) StopAPIServer(t testing.TB) {
	t.Helper()
	e.apiMu.Lock()
	defer e.apiMu.Unlock()
	if e.apiDown {
		return
	}
	pid := e.apiServerPid()
	if pid == 0 {
		t.Fatalf("stopping the apiserver: no kube-apiserver process with --cert-dir=%s", e.certDir)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("killing the apiserver (pid %d): %v", pid, err)
	}
	// envtest reaps it; its Stop then finds it exited and only resets its state (the certificate
	// directory is ours, so it stays).
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		if os.IsNotExist(err) {
			if err := e.Env.ControlPlane.APIServer.Stop(); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the killed apiserver (pid %d) did not go away", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.apiDown = true
	t.Cleanup(func() {
		e.apiMu.Lock()
		down := e.apiDown
		e.apiMu.Unlock()
		if down {
			e.StartAPIServer(t)
		}
	})
}

// apiServerPid finds the apiserver's process by its certificate directory, which is Env's own.
func (e *Env) apiServerPid() int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	want := []byte("--cert-dir=" + e.certDir + "\x00")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmdline, want) {
			return pid
		}
	}
	return 0
}

// StartAPIServer starts the stopped apiserver again on the same address and port, with the same
// etcd, serving certificate and client CA, so clients with the same kubeconfig reconnect. It
// returns once /healthz answers.
func (e *Env) StartAPIServer(t testing.TB) {
	t.Helper()
	e.apiMu.Lock()
	defer e.apiMu.Unlock()
	if !e.apiDown {
		return
	}
	var err error
	// The port is free again only once the old process has closed it; a restart can race another
	// process taking it (a test bed on loopback rarely sees that).
	for i := 0; i < 5; i++ {
		if err = e.Env.ControlPlane.APIServer.Start(); err == nil {
			e.apiDown = false
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("starting the apiserver again: %v", err)
}

// APIServerDown says whether StopAPIServer stopped it.
func (e *Env) APIServerDown() bool {
	e.apiMu.Lock()
	defer e.apiMu.Unlock()
	return e.apiDown
}

// APIServerOutage stops the apiserver for d, then starts it again.
func (e *Env) APIServerOutage(t testing.TB, d time.Duration) {
	t.Helper()
	e.StopAPIServer(t)
	time.Sleep(d)
	e.StartAPIServer(t)
}

// APIServerAddr is the apiserver's secure host:port.
func (e *Env) APIServerAddr() string {
	return e.Env.ControlPlane.APIServer.SecureServing.HostPort()
}

// PartitionableKubeconfig writes a kubeconfig like Kubeconfig's whose server is a TCP proxy in
// front of the apiserver, and returns it with the proxy: proxy.Partition() cuts whoever uses this
// kubeconfig (an agent) off the apiserver while everything else still reaches it, Heal() ends it.
// The apiserver's serving certificate names 127.0.0.1, so TLS to the proxy's port verifies as
// to the apiserver's. Give each agent its own to partition them one at a time.
func (e *Env) PartitionableKubeconfig(t testing.TB) (string, *testbed.Proxy) {
	t.Helper()
	proxy := testbed.StartProxy(t, e.APIServerAddr())
	src := e.Kubeconfig(t)
	cfg, err := clientcmd.LoadFromFile(src)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range cfg.Clusters {
		u, err := url.Parse(c.Server)
		if err != nil {
			t.Fatalf("kubeconfig cluster %s: %v", name, err)
		}
		u.Host = proxy.Addr
		c.Server = u.String()
	}
	p := filepath.Join(t.TempDir(), "kubeconfig-proxied")
	if err := clientcmd.WriteToFile(*cfg, p); err != nil {
		t.Fatal(err)
	}
	return p, proxy
}

// Pid is the agent process's id.
func (p *AgentProcess) Pid() int { return p.Cmd.Process.Pid }

// Done is closed once the process has exited.
func (p *AgentProcess) Done() <-chan struct{} { return p.done }

// Exited says whether the process has exited (killed, or on its own).
func (p *AgentProcess) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode is the process's exit status once it exited (-1 if a signal ended it or it runs).
func (p *AgentProcess) ExitCode() int {
	if !p.Exited() || p.Cmd.ProcessState == nil {
		return -1
	}
	return p.Cmd.ProcessState.ExitCode()
}

// Pause sends SIGSTOP: the agent stops in its tracks (no renewal, no report) while its daemon's
// builds go on, as a frozen VM or a long GC pause would. Resume continues it.
func (p *AgentProcess) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.Exited() {
		return
	}
	_ = p.Cmd.Process.Signal(syscall.SIGSTOP)
	p.paused = true
}

// Resume sends SIGCONT to a paused agent.
func (p *AgentProcess) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.paused {
		return
	}
	_ = p.Cmd.Process.Signal(syscall.SIGCONT)
	p.paused = false
}

// Paused says whether Pause stopped it and Resume did not continue it yet.
func (p *AgentProcess) Paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}

// Restart starts the same agent again (same name, flags and environment, so the same Lease and
// daemon) once the process has exited, e.g. after Kill; it returns the new process, whose log is
// a file of its own (name.N.log) printed if the test fails.
func (p *AgentProcess) Restart(t testing.TB) *AgentProcess {
	t.Helper()
	if !p.Exited() {
		t.Fatalf("restarting agent %s: pid %d still runs", p.Name, p.Pid())
	}
	n := p.incarnation + 1
	logf, err := os.Create(filepath.Join(t.TempDir(), fmt.Sprintf("%s.%d.log", p.Name, n)))
	if err != nil {
		t.Fatal(err)
	}
	q := &AgentProcess{Name: p.Name, log: logf, done: make(chan struct{}), bin: p.bin, args: p.args, env: p.env,
		logTail: p.logTail, incarnation: n}
	q.start(t)
	t.Cleanup(func() {
		q.Stop()
		if t.Failed() {
			data, _ := os.ReadFile(logf.Name())
			t.Logf("agent %s (restart %d) log:\n%s", q.Name, n, tail(string(data), q.logTail))
		}
	})
	return q
}

// WaitExit waits up to d for the process to exit on its own and says whether it did.
func (p *AgentProcess) WaitExit(ctx context.Context, d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	case <-ctx.Done():
		return false
	}
}
