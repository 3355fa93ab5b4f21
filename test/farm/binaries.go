package farm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// built holds the binaries built by this test binary, by command name.
var built struct {
	mu   sync.Mutex
	bins map[string]*binary
}

type binary struct {
	once sync.Once
	path string
	err  error
}

// Binary builds ./cmd/<name> of the project once per test binary and returns its path.
func Binary(t testing.TB, name string) string {
	t.Helper()
	built.mu.Lock()
	if built.bins == nil {
		built.bins = map[string]*binary{}
	}
	b := built.bins[name]
	if b == nil {
		b = &binary{}
		built.bins[name] = b
	}
	built.mu.Unlock()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", name+"-bin-")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", b.path, "./cmd/"+name)
		cmd.Dir = Root()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("building %s: %v\n%s", name, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}
