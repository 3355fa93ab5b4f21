package bucket

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/internal/signing"
)

// crashChildEnv makes the test binary a publisher that stops between the
// nar and the narinfo, waiting to be killed (TestCrashBetweenNarAndNarInfo).
const crashChildEnv = "GUIXFARM_BUCKET_CRASH_CHILD"

type crashArgs struct {
	Endpoint, Bucket, AccessKey, SecretKey string
	StorePath, Dir                         string
}

func TestMain(m *testing.M) {
	if a := os.Getenv(crashChildEnv); a != "" {
		os.Exit(crashChild(a))
	}
	if a := os.Getenv(benchChildEnv); a != "" {
		os.Exit(benchChild(a))
	}
	os.Exit(m.Run())
}

func crashChild(arg string) int {
	var a crashArgs
	if err := json.Unmarshal([]byte(arg), &a); err != nil {
		fmt.Println("ERR", err)
		return 2
	}
	sk, _ := signing.ParseNixSecretKey(testSecretKey)
	p, err := NewPublisher(Config{Endpoint: a.Endpoint, Bucket: a.Bucket, AccessKey: a.AccessKey, SecretKey: a.SecretKey,
		Keys: signing.Keys{Nix: []signing.NixSecretKey{sk}}})
	if err != nil {
		fmt.Println("ERR", err)
		return 2
	}
	p.beforeNarInfo = func() {
		fmt.Println("NAR-UPLOADED")
		time.Sleep(time.Hour) // killed here
	}
	_, err = p.Publish(context.Background(), DiskItem(a.StorePath, a.Dir))
	fmt.Println("ERR", err)
	return 1
}

// TestCrashBetweenNarAndNarInfo kills -9 a publisher process after its nar
// is uploaded and verified but before the narinfo PUT: no narinfo is
// visible, and the next publish completes.
func TestCrashBetweenNarAndNarInfo(t *testing.T) {
	e := newEnv(t)
	content := demoDrv
	args, _ := json.Marshal(crashArgs{Endpoint: e.m.URL, Bucket: e.bucket, AccessKey: e.m.AccessKey, SecretKey: e.m.SecretKey,
		StorePath: drvPath, Dir: file(t, content)})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+string(args))
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			line <- s.Text()
		}
		close(line)
	}()
	select {
	case l := <-line:
		if l != "NAR-UPLOADED" {
			t.Fatalf("child publisher said %q", l)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("child publisher did not reach the narinfo step")
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	cmd.Wait()

	narinfoURL := e.url(NarInfoKey(mustParse(t, drvPath)))
	if code, body := e.m.Get(t, narinfoURL); code != http.StatusNotFound {
		t.Fatalf("after the crash the narinfo answers %d: %q", code, body)
	}
	var orphan string
	for _, k := range e.objects(t) {
		if strings.HasPrefix(k, "nar/") {
			orphan = k
		}
	}
	if orphan == "" {
		t.Fatal("no nar object: the child did not upload before the crash point")
	}

	res, err := e.pub.Publish(context.Background(), DiskItem(drvPath, file(t, content)))
	if err != nil || res.AlreadyPresent || res.NarKey != orphan {
		t.Fatalf("publish after the crash: %+v, %v (orphan %s)", res, err, orphan)
	}
	r, _ := NewReader(Config{Endpoint: e.m.URL, Bucket: e.bucket}, ReaderOptions{})
	if got, err := r.Read(context.Background(), drvPath); err != nil || string(got) != content {
		t.Errorf("Read after republish = %q, %v", got, err)
	}
}
