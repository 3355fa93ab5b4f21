// Package runfarm checks the README's first command: `make run` stands up a whole local farm
// (hack/run-farm.sh) whose sample Builds succeed, then stops everything it started.
package runfarm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/test/farm"
	"github.com/guixfarm/guix-farm/test/testbed"
)

func TestMakeRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole farm")
	}
	for _, tool := range []string{"etcd", "kube-apiserver", "kubectl", "minio"} {
		testbed.Tool(t, tool, tool)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "run")
	cmd := exec.CommandContext(ctx, filepath.Join(farm.Root(), "hack", "run-farm.sh"))
	cmd.Dir = farm.Root()
	cmd.Env = append(os.Environ(), "RUN_FARM_EXIT_AFTER_READY=1", "RUN_FARM_DIR="+dir, "RUN_FARM_BUILD_DURATION=1s")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hack/run-farm.sh: %v\n%s", err, tail(string(out), 6000))
	}
	t.Logf("make run:\n%s", tail(string(out), 2500))
	if !strings.Contains(string(out), "Succeeded") {
		t.Errorf("make run did not report succeeded builds")
	}
	// Nothing it started may outlive it.
	if left, _ := exec.Command("pgrep", "-f", dir).Output(); len(strings.TrimSpace(string(left))) > 0 {
		t.Errorf("processes left running after make run: %s", left)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
