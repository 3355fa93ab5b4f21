package testbed

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIO is a running single-drive MinIO server on loopback.
type MinIO struct {
	// Endpoint is host:port, for minio-go.
	Endpoint string
	// URL is http://host:port, the base of anonymous (client) URLs.
	URL       string
	AccessKey string
	SecretKey string
	DataDir   string
	// Client is an admin client.
	Client *minio.Client

	bin, console string
	cmd          *exec.Cmd
	exited       chan struct{}
	logs         *bytes.Buffer
	mu           sync.Mutex
	stopped      bool
}

// StartMinIO starts MinIO with a temporary data dir on a free port and
// waits until it is ready. It is stopped when the test ends.
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	bin := Tool(t, "minio", "minio")
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // a port can be taken between FreePort and bind
		m, err := startMinIO(t, bin)
		if err == nil {
			return m
		}
		lastErr = err
	}
	t.Fatalf("testbed: starting minio: %v", lastErr)
	return nil
}

func startMinIO(t testing.TB, bin string) (*MinIO, error) {
	port, console := FreePort(t), FreePort(t)
	m := &MinIO{
		Endpoint:  "127.0.0.1:" + itoa(port),
		AccessKey: "farmadmin",
		SecretKey: "farmadmin-secret",
		DataDir:   t.TempDir(),
		logs:      &bytes.Buffer{},
		bin:       bin,
		console:   "127.0.0.1:" + itoa(console),
	}
	m.URL = "http://" + m.Endpoint
	t.Cleanup(m.Stop)
	if err := m.spawn(); err != nil {
		return nil, err
	}
	c, err := minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")})
	if err != nil {
		return nil, err
	}
	m.Client = c
	return m, nil
}

// spawn starts the server on m's address and data dir and waits until it is ready.
func (m *MinIO) spawn() error {
	cmd := exec.Command(m.bin, "server", m.DataDir, "--quiet", "--address", m.Endpoint, "--console-address", m.console)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+m.AccessKey, "MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1")
	cmd.Stdout, cmd.Stderr = &lockedWriter{w: m.logs, mu: &m.mu}, &lockedWriter{w: m.logs, mu: &m.mu}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	m.mu.Lock()
	m.cmd, m.exited, m.stopped = cmd, exited, false
	m.mu.Unlock()

	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			return fmt.Errorf("minio exited: %s", m.Logs())
		default:
		}
		resp, err := http.Get(m.URL + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			m.Stop()
			return fmt.Errorf("minio not ready after 30s: %v\n%s", err, m.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the server (SIGTERM, SIGKILL after 10 s) and waits for it to exit; its data dir is
// kept for Start. It does nothing if the server is stopped.
func (m *MinIO) Stop() {
	m.mu.Lock()
	cmd, exited, stopped := m.cmd, m.exited, m.stopped
	m.stopped = true
	m.mu.Unlock()
	if stopped || cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

// Start starts a stopped server again on the same address, with the same data dir (buckets,
// objects and policies kept) and credentials, and waits until it is ready.
func (m *MinIO) Start(t testing.TB) {
	t.Helper()
	m.mu.Lock()
	stopped := m.stopped
	m.mu.Unlock()
	if !stopped {
		return
	}
	var err error
	for i := 0; i < 5; i++ { // the port is free once the old process has closed it
		if err = m.spawn(); err == nil {
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("testbed: starting minio again: %v", err)
}

// Stopped says whether the server is stopped.
func (m *MinIO) Stopped() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stopped
}

// Outage stops the server for d, then starts it again.
func (m *MinIO) Outage(t testing.TB, d time.Duration) {
	t.Helper()
	m.Stop()
	time.Sleep(d)
	m.Start(t)
}

// Logs returns what the server printed so far.
func (m *MinIO) Logs() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.logs.String()
}

// MakeBucket creates a bucket with the admin client (no policy).
func (m *MinIO) MakeBucket(t testing.TB, name string) {
	t.Helper()
	if err := m.Client.MakeBucket(context.Background(), name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("testbed: creating bucket %s: %v", name, err)
	}
}

// BucketURL is the anonymous HTTP URL of a bucket: a substituter URL.
func (m *MinIO) BucketURL(bucket string) string { return m.URL + "/" + bucket }

// Get fetches url anonymously and returns the status and body.
func (m *MinIO) Get(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("testbed: GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return resp.StatusCode, b.String()
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w.Len() > 1<<20 { // keep the tail bounded
		l.w.Reset()
	}
	return l.w.Write(p)
}
