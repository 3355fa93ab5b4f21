package testbed

import (
	"bytes"
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
)

// StoreDir is the store directory every test-bed daemon uses, as Guix does.
const StoreDir = "/gnu/store"

// NixOptions configures a test-bed nix-daemon's nix.conf.
type NixOptions struct {
	// Substituters are substituter URLs (e.g. a MinIO bucket URL).
	Substituters []string
	// TrustedPublicKeys are Nix public keys ("name:base64").
	TrustedPublicKeys []string
	// NoRequireSigs sets require-sigs = false. require-sigs is a store
	// setting fixed when the daemon opens its store: a client's
	// --option require-sigs false has no effect through the daemon.
	NoRequireSigs bool
	// NoSandbox sets sandbox = false (the default is a chroot sandbox,
	// which works as root here).
	NoSandbox bool
	// ExtraConf is appended to nix.conf.
	ExtraConf string
}

// NixDaemon is a nix-daemon 2.8 running in a private mount namespace where
// its own store directory is bind-mounted on /gnu/store.
type NixDaemon struct {
	// Root holds store/, state/, log/, conf/ and home/.
	Root string
	// Store is the host directory mounted on /gnu/store inside the
	// namespace: store path P is at HostPath(P) from the test process.
	Store string
	// Socket is the daemon's Unix socket, reachable from the host.
	Socket string
	PID    int

	env  []string
	cmd  *exec.Cmd
	logs *bytes.Buffer
	mu   sync.Mutex
}

// StartNixDaemon starts a daemon with an empty store and waits for its
// socket. Clients must run through Run (inside its mount namespace): a
// Nix 2.8 unix:// client reads store files from its own /gnu/store view.
func StartNixDaemon(t testing.TB, opts NixOptions) *NixDaemon {
	t.Helper()
	daemon := Tool(t, "nix-daemon", "nix")
	Tool(t, "nix-store", "nix")
	unshare := Tool(t, "unshare", "nix")
	Tool(t, "nsenter", "nix")
	if os.Geteuid() != 0 {
		skipOrFail(t, "nix-daemon test bed needs root (mount namespaces, bind mounts)")
	}
	if err := os.MkdirAll(StoreDir, 0o755); err != nil {
		skipOrFail(t, fmt.Sprintf("creating %s on the host: %v", StoreDir, err))
	}
	// A short root: the socket path must fit in sun_path (108 bytes).
	root, err := os.MkdirTemp("", "nixd")
	if err != nil {
		t.Fatal(err)
	}
	d := &NixDaemon{Root: root, Store: filepath.Join(root, "store"), logs: &bytes.Buffer{}}
	for _, sub := range []string{"store", "state", "log", "conf", "home", "cache"} {
		if err := os.MkdirAll(filepath.Join(root, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d.Socket = filepath.Join(root, "state", "daemon-socket", "socket")
	if err := os.WriteFile(filepath.Join(root, "conf", "nix.conf"), []byte(opts.conf()), 0o644); err != nil {
		t.Fatal(err)
	}
	// The daemon's environment is built from scratch: NIX_REMOTE in it would
	// make every worker connect back to the daemon (testbed.md pitfall 5a).
	d.env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + filepath.Join(root, "home"),
		// Nix's narinfo disk cache lives here; private so that one test's
		// negative lookups never leak into another's.
		"XDG_CACHE_HOME=" + filepath.Join(root, "cache"),
		"NIX_STORE_DIR=" + StoreDir,
		"NIX_STATE_DIR=" + filepath.Join(root, "state"),
		"NIX_LOG_DIR=" + filepath.Join(root, "log"),
		"NIX_CONF_DIR=" + filepath.Join(root, "conf"),
	}
	d.cmd = exec.Command(unshare, "-m", "--propagation", "private", "sh", "-c",
		`mount --bind "$1" `+StoreDir+` && exec "$2"`, "sh", d.Store, daemon)
	d.cmd.Env = d.env
	d.cmd.Stdout = &lockedWriter{w: d.logs, mu: &d.mu}
	d.cmd.Stderr = d.cmd.Stdout
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("testbed: starting nix-daemon: %v", err)
	}
	d.PID = d.cmd.Process.Pid // unshare and sh exec, so this becomes the daemon
	exited := make(chan struct{})
	go func() { d.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		d.stop(exited)
		os.RemoveAll(root)
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(d.Socket); err == nil {
			break
		}
		select {
		case <-exited:
			t.Fatalf("testbed: nix-daemon exited: %s", d.Logs())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("testbed: nix-daemon socket %s did not appear: %s", d.Socket, d.Logs())
		}
	}
	return d
}

func skipOrFail(t testing.TB, msg string) {
	t.Helper()
	if Required() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func (o NixOptions) conf() string {
	var b strings.Builder
	b.WriteString("build-users-group =\nexperimental-features = nix-command\ntrusted-users = root\n")
	b.WriteString("fsync-metadata = false\n")
	fmt.Fprintf(&b, "sandbox = %t\n", !o.NoSandbox)
	fmt.Fprintf(&b, "require-sigs = %t\n", !o.NoRequireSigs)
	fmt.Fprintf(&b, "substituters = %s\n", strings.Join(o.Substituters, " "))
	fmt.Fprintf(&b, "trusted-public-keys = %s\n", strings.Join(o.TrustedPublicKeys, " "))
	// Look a substituter up afresh every time: tests publish and then ask.
	b.WriteString("narinfo-cache-negative-ttl = 0\nnarinfo-cache-positive-ttl = 0\n")
	b.WriteString(o.ExtraConf)
	b.WriteString("\n")
	return b.String()
}

func (d *NixDaemon) stop(exited chan struct{}) {
	// The daemon forks a worker per connection, and builds run in further
	// children; all share its process group.
	syscall.Kill(-d.PID, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		syscall.Kill(-d.PID, syscall.SIGKILL)
		<-exited
	}
}

// Logs returns what the daemon printed so far.
func (d *NixDaemon) Logs() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.logs.String()
}

// HostPath is where store path p lives on the host.
func (d *NixDaemon) HostPath(p string) string {
	return filepath.Join(d.Store, strings.TrimPrefix(p, StoreDir+"/"))
}

// Env is the environment of a client of this daemon (no NIX_REMOTE in the
// daemon's own, see StartNixDaemon).
func (d *NixDaemon) Env() []string {
	return append(append([]string{}, d.env...), "NIX_REMOTE=unix://"+d.Socket)
}

// Command returns a nix client command run inside the daemon's mount
// namespace (nsenter resets the working directory to /: use absolute paths).
func (d *NixDaemon) Command(ctx context.Context, args ...string) *exec.Cmd {
	nsenter, _ := exec.LookPath("nsenter")
	cmd := exec.CommandContext(ctx, nsenter, append([]string{"-t", itoa(d.PID), "-m", "--"}, args...)...)
	cmd.Env = d.Env()
	return cmd
}

// Run runs a nix client command and returns its standard output; the error
// includes its standard error.
func (d *NixDaemon) Run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := d.Command(ctx, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// MustRun is Run that fails the test, returning trimmed standard output.
func (d *NixDaemon) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := d.Run(ctx, args...)
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// AddBusybox adds the static busybox to the store as a directory
// bbsrc/bin/busybox (busybox picks its applet from argv[0], and Nix sets
// argv[0] to the builder's base name) and returns its store path.
func (d *NixDaemon) AddBusybox(t testing.TB) string {
	t.Helper()
	bb := Tool(t, "busybox", "nix")
	src := filepath.Join(d.Root, "bbsrc")
	if err := os.MkdirAll(filepath.Join(src, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	return d.MustRun(t, "nix-store", "--add", src)
}

// Build instantiates and realises a derivation named name whose builder is
// busybox sh running script, with $bb set to the busybox store path bb
// (which becomes an input) and $out the output. It returns the .drv and
// output paths.
func (d *NixDaemon) Build(t testing.TB, bb, name, script string) (drv, out string) {
	t.Helper()
	drv = d.Instantiate(t, name, fmt.Sprintf(`let bb = builtins.storePath %s; in
derivation { name = %s; system = builtins.currentSystem; builder = "${bb}/bin/busybox";
  args = [ "sh" "-c" %s ]; inherit bb; }`, NixString(bb), NixString(name), NixString(script)))
	out = d.MustRun(t, "nix-store", "--realise", drv)
	return drv, out
}

// Instantiate writes a Nix expression to a file and instantiates it.
func (d *NixDaemon) Instantiate(t testing.TB, name, expr string) string {
	t.Helper()
	f, err := os.CreateTemp(d.Root, name+"-*.nix")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(expr)
	f.Close()
	return d.MustRun(t, "nix-instantiate", f.Name())
}

// NixString quotes s as a Nix string literal.
func NixString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "${", `\${`, "\n", `\n`, "\t", `\t`, "\r", `\r`)
	return `"` + r.Replace(s) + `"`
}
