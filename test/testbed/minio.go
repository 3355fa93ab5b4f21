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

	cmd     *exec.Cmd
	logs    *bytes.Buffer
	mu      sync.Mutex
	stopped bool
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
	}
	m.URL = "http://" + m.Endpoint
	m.cmd = exec.Command(bin, "server", m.DataDir, "--quiet", "--address", m.Endpoint, "--console-address", "127.0.0.1:"+itoa(console))
	m.cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+m.AccessKey, "MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1")
	m.cmd.Stdout, m.cmd.Stderr = &lockedWriter{w: m.logs, mu: &m.mu}, &lockedWriter{w: m.logs, mu: &m.mu}
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan struct{})
	go func() { m.cmd.Wait(); close(exited) }()
	t.Cleanup(func() { m.stop(exited) })

	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			return nil, fmt.Errorf("minio exited: %s", m.Logs())
		default:
		}
		resp, err := http.Get(m.URL + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("minio not ready after 30s: %v\n%s", err, m.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	c, err := minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")})
	if err != nil {
		return nil, err
	}
	m.Client = c
	return m, nil
}

func (m *MinIO) stop(exited chan struct{}) {
	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		m.cmd.Process.Kill()
		<-exited
	}
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
