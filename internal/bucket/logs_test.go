package bucket

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/minio/minio-go/v7"

	"github.com/guixfarm/guix-farm/test/testbed"
)

func readLog(t *testing.T, r *Reader, drv string, attempt int) string {
	t.Helper()
	rc, err := r.OpenLog(context.Background(), drv, attempt)
	if err != nil {
		t.Fatalf("OpenLog(%d): %v", attempt, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("OpenLog(%d): reading: %v", attempt, err)
	}
	return string(b)
}

// TestAttemptLogs: each attempt keeps its own log, re-uploads of a running
// attempt replace only it, and log/<drv> (what clients fetch) follows the
// latest attempt, also against a late upload of an earlier one.
func TestAttemptLogs(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	r, err := NewReader(Config{Endpoint: e.m.URL, Bucket: e.bucket}, ReaderOptions{}) // anonymous, as kubectl guixfarm logs
	if err != nil {
		t.Fatal(err)
	}
	publish := func(attempt int, text string) {
		t.Helper()
		if err := e.pub.PublishAttemptLog(ctx, drvPath, attempt, strings.NewReader(text)); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(latest, one, two string) {
		t.Helper()
		for attempt, want := range map[int]string{0: latest, 1: one, 2: two} {
			if want == "" {
				continue
			}
			if got := readLog(t, r, drvPath, attempt); got != want {
				t.Errorf("attempt %d: log %q, want %q", attempt, got, want)
			}
		}
	}

	publish(1, "line 1\n") // attempt 1 running: the log so far
	expect("line 1\n", "line 1\n", "")
	publish(1, "line 1\nline 2\n")
	expect("line 1\nline 2\n", "line 1\nline 2\n", "")
	publish(2, "attempt 2\n")
	expect("attempt 2\n", "line 1\nline 2\n", "attempt 2\n")
	// An agent that lost its claim uploads attempt 1 late: log/ stays.
	publish(1, "line 1\nline 2\nline 3\n")
	expect("attempt 2\n", "line 1\nline 2\nline 3\n", "attempt 2\n")

	if got, err := r.LogAttempts(ctx, drvPath); err != nil || !cmp.Equal(got, []int{1, 2}) {
		t.Errorf("LogAttempts = %v, %v", got, err)
	}
	want := []string{"attempt-log/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv/1", "attempt-log/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv/2", "log/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv", "nix-cache-info"}
	if d := cmp.Diff(want, e.objects(t)); d != "" {
		t.Errorf("objects (-want +got):\n%s", d)
	}
	if AttemptLogKey(drvPath, 2) != want[1] || LogKey(drvPath) != want[2] {
		t.Errorf("keys %s, %s", AttemptLogKey(drvPath, 2), LogKey(drvPath))
	}

	// As clients fetch it: gzip undone by the HTTP client.
	for _, key := range []string{LogKey(drvPath), AttemptLogKey(drvPath, 1)} {
		resp, err := http.Get(e.url(key))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !resp.Uncompressed || !strings.HasPrefix(string(body), "line 1\n") && string(body) != "attempt 2\n" {
			t.Errorf("GET %s: %d, decompressed %v, %q", key, resp.StatusCode, resp.Uncompressed, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != ContentTypeLog {
			t.Errorf("GET %s: Content-Type %q", key, ct)
		}
	}

	// A log larger than one part goes through the multipart path.
	big := randomLog(t, 6<<20) // 12 MiB of hex: above 5 MiB gzipped
	e.pub.cfg.PartSize = minPartSize
	publish(3, big)
	if got := readLog(t, r, drvPath, 0); got != big {
		t.Errorf("big log: %d bytes back, want %d", len(got), len(big))
	}
	if st, err := e.m.Client.StatObject(ctx, e.bucket, AttemptLogKey(drvPath, 3), minio.StatObjectOptions{}); err != nil || st.Size <= minPartSize {
		t.Errorf("big log stored as %d bytes (%v), want more than one part", st.Size, err)
	}

	other := "/gnu/store/00bgd045z0d4icpbc2yyz4gx48ak44la-other.drv"
	if _, err := r.OpenLog(ctx, other, 0); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), other) {
		t.Errorf("OpenLog of a build without log: %v", err)
	}
	if _, err := r.OpenLog(ctx, drvPath, 9); !errors.Is(err, ErrNotFound) {
		t.Errorf("OpenLog of a missing attempt: %v", err)
	}
	for name, err := range map[string]error{
		"attempt 0":  e.pub.PublishAttemptLog(ctx, drvPath, 0, strings.NewReader("x")),
		"not a .drv": e.pub.PublishAttemptLog(ctx, outPath, 1, strings.NewReader("x")),
		"read error": e.pub.PublishAttemptLog(ctx, drvPath, 4, io.MultiReader(strings.NewReader("x"), errReader{})),
	} {
		if err == nil {
			t.Errorf("PublishAttemptLog, %s: no error", name)
		}
	}
	if _, err := r.OpenLog(ctx, drvPath, -1); err == nil {
		t.Error("OpenLog of attempt -1: no error")
	}
	if got, _ := r.LogAttempts(ctx, drvPath); !cmp.Equal(got, []int{1, 2, 3}) {
		t.Errorf("after a failed upload, LogAttempts = %v", got)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("the build's pipe broke") }

// randomLog is n random bytes in hex lines: a log gzip cannot shrink to
// less than about half.
func randomLog(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	var s strings.Builder
	for len(b) > 0 {
		k := min(32, len(b))
		s.WriteString(hex.EncodeToString(b[:k]) + "\n")
		b = b[k:]
	}
	return s.String()
}

// TestNixLog: Nix 2.8's `nix log --store <bucket URL>` reads what
// PublishAttemptLog wrote, for the .drv and, through the narinfo's
// Deriver, for an output.
func TestNixLog(t *testing.T) {
	nix := testbed.Tool(t, "nix", "nix")
	e := newEnv(t)
	ctx := context.Background()
	text := "building '" + drvPath + "'...\nhello from the builder\n"
	if err := e.pub.PublishAttemptLog(ctx, drvPath, 1, strings.NewReader(text)); err != nil {
		t.Fatal(err)
	}
	out := DiskItem(outPath, tree(t, "built"))
	out.Deriver = drvPath
	// Nix 2.8 reads the .drv to resolve a derivation argument (it wants
	// its narinfo), as the farm publishes .drv files anyway.
	drv := DiskItem(drvPath, file(t, demoDrv))
	for _, it := range []StoreItem{out, drv} {
		if _, err := e.pub.Publish(ctx, it); err != nil {
			t.Fatal(err)
		}
	}
	// A client of no daemon: the http store is the only one asked.
	home := t.TempDir()
	conf := filepath.Join(home, "conf")
	os.MkdirAll(conf, 0o755)
	os.WriteFile(filepath.Join(conf, "nix.conf"), []byte("experimental-features = nix-command\nsubstituters =\n"), 0o644)
	for _, p := range []string{outPath, drvPath} {
		cmd := exec.CommandContext(ctx, nix, "log", "--store", e.m.BucketURL(e.bucket), p)
		cmd.Env = []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, "cache"), "NIX_CONF_DIR=" + conf,
			"NIX_STATE_DIR=" + filepath.Join(home, "state"), "NIX_STORE_DIR=/gnu/store", "PATH=" + os.Getenv("PATH")}
		got, err := cmd.Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("nix log %s: %v\n%s", p, err, ee.Stderr)
		}
		if err != nil || string(got) != text {
			t.Errorf("nix log %s = %q, %v; want %q", p, got, err, text)
		}
	}
}
