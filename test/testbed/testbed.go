// Package testbed starts the real parts integration tests and benchmarks
// run against: a MinIO server and Debian's nix-daemon 2.8 with its own
// /gnu/store. Everything it starts is stopped by t.Cleanup.
//
// Tools come from GUIXFARM_TOOLS_BIN (default: <repo>/.cache/tools/bin,
// filled by hack/tools.sh) and, for nix, from PATH. A missing tool skips the
// test, unless GUIXFARM_REQUIRE_TESTBED=1, when it fails naming the
// hack/tools.sh target that installs it.
package testbed

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// ToolsBin is the directory of the pinned test-bed binaries.
func ToolsBin() string {
	if d := os.Getenv("GUIXFARM_TOOLS_BIN"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, ".cache", "tools", "bin")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// Required reports whether missing tools fail tests instead of skipping them.
func Required() bool { return os.Getenv("GUIXFARM_REQUIRE_TESTBED") == "1" }

// Tool returns the path of a test-bed binary: first in ToolsBin, then on
// PATH. When it is missing the test is skipped, or fails under
// GUIXFARM_REQUIRE_TESTBED=1; target is the hack/tools.sh argument that
// installs it.
func Tool(t testing.TB, name, target string) string {
	t.Helper()
	if p := filepath.Join(ToolsBin(), name); isExec(p) {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	msg := name + " not found in " + ToolsBin() + " or PATH: run hack/tools.sh " + target
	if Required() {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testbed: finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func itoa(i int) string { return strconv.Itoa(i) }

// WaitFor polls cond every 200 ms until it holds, failing the test with what and cond's last
// explanation after d.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting %s for %s: %s", d, what, why)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
