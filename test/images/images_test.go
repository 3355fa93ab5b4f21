// Package images tests the images `make images` builds with hack/ocibuild: two builds of the same
// commit are the same bytes; the controller and the agent are static binaries for every
// architecture, run as 65532 and start as that user from their own root filesystem; the test
// daemon image holds nix-daemon with everything it loads, and serves the worker protocol on
// guix-daemon's socket when started from its root filesystem.
package images

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers/agentpool"
	"github.com/guixfarm/guix-farm/test/testbed"
)

const (
	registry = "ghcr.io/guixfarm/"
	// The entrypoint and the socket of the test daemon image: what the farm's pods rely on.
	testDaemonEntrypoint = "/usr/local/bin/guix-farm-test-daemon"
	daemonSocket         = "/var/guix/daemon-socket/socket"
)

func TestImages(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	ocibuild := filepath.Join(t.TempDir(), "ocibuild")
	run(t, root, "go", "build", "-o", ocibuild, "./hack/ocibuild")

	// The test daemon image is made of the host's nix-bin and busybox-static.
	var args []string
	_, nixErr := exec.LookPath("nix-daemon")
	_, bbErr := os.Stat("/bin/busybox")
	withDaemon := nixErr == nil && bbErr == nil
	if !withDaemon {
		if testbed.Required() {
			t.Fatal("nix-daemon or /bin/busybox missing: run hack/tools.sh nix")
		}
		t.Log("nix-daemon or /bin/busybox missing (hack/tools.sh nix): not building the test daemon image")
		args = append(args, "-test-daemon=")
	}
	names := []string{"guix-farm-controller", "guix-farm-agent"}
	if withDaemon {
		names = append(names, "guix-farm-test-daemon")
	}
	a, b := t.TempDir(), t.TempDir()
	for _, out := range []string{a, b} {
		start := time.Now()
		run(t, root, ocibuild, append([]string{"-out", out}, args...)...)
		t.Logf("built the images into %s in %v", out, time.Since(start).Round(time.Millisecond))
	}

	t.Run("reproducible", func(t *testing.T) {
		for _, name := range names {
			da, db := indexDigest(t, filepath.Join(a, name)), indexDigest(t, filepath.Join(b, name))
			if da != db {
				t.Errorf("%s: two builds of one commit differ: %s and %s", name, da, db)
			}
			if sa, sb := fileSum(t, filepath.Join(a, name+".tar")), fileSum(t, filepath.Join(b, name+".tar")); sa != sb {
				t.Errorf("%s.tar: two builds of one commit differ", name)
			}
			t.Logf("%s %s", name, da)
		}
	})

	// The images holding one of our commands, by name, and a flag its usage must show.
	for name, usageFlag := range map[string]string{"guix-farm-controller": "-agent-grace", "guix-farm-agent": "-daemon-socket"} {
		t.Run(name, func(t *testing.T) {
			images := platformImages(t, filepath.Join(a, name), registry+name+":dev")
			if got := slices.Sorted(maps.Keys(images)); !slices.Equal(got, []string{"amd64", "arm64"}) {
				t.Fatalf("platforms %v, want amd64 and arm64", got)
			}
			for arch, img := range images {
				cfg := configFile(t, img)
				if cfg.Config.User != "65532:65532" {
					t.Errorf("%s: User %q, want 65532:65532", arch, cfg.Config.User)
				}
				want := []string{"/" + name}
				if !slices.Equal(cfg.Config.Entrypoint, want) {
					t.Fatalf("%s: Entrypoint %q, want %q", arch, cfg.Config.Entrypoint, want)
				}
				if cfg.Architecture != arch || cfg.OS != "linux" {
					t.Errorf("%s: config says %s/%s", arch, cfg.OS, cfg.Architecture)
				}
				files := flatten(t, img)
				checkBase(t, files)
				bin := files[name]
				if bin == nil || bin.hdr.Typeflag != tar.TypeReg {
					t.Fatalf("%s: no /%s in the image", arch, name)
				}
				checkStaticELF(t, bin.data, arch)
				if arch == runtime.GOARCH {
					runAsNonroot(t, files, "/"+name, usageFlag)
				}
			}
		})
	}

	if withDaemon {
		t.Run("guix-farm-test-daemon", func(t *testing.T) {
			checkTestDaemon(t, filepath.Join(a, "guix-farm-test-daemon"))
		})
	}
}

// run runs a command in dir, failing the test with its output.
func run(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func fileSum(t *testing.T, p string) [sha256.Size]byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

// topIndex reads the layout in dir and returns its one entry: the image's index and the
// descriptor that names it.
func topIndex(t *testing.T, dir string) (v1.ImageIndex, v1.Descriptor) {
	t.Helper()
	top, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("reading the OCI layout %s: %v", dir, err)
	}
	m, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 {
		t.Fatalf("%s/index.json has %d entries, want 1", dir, len(m.Manifests))
	}
	idx, err := top.ImageIndex(m.Manifests[0].Digest)
	if err != nil {
		t.Fatalf("%s: the image index: %v", dir, err)
	}
	return idx, m.Manifests[0]
}

func indexDigest(t *testing.T, dir string) v1.Hash {
	t.Helper()
	_, desc := topIndex(t, dir)
	return desc.Digest
}

// platformImages checks the names a containerd import takes and returns the images by
// architecture.
func platformImages(t *testing.T, dir, ref string) map[string]v1.Image {
	t.Helper()
	idx, desc := topIndex(t, dir)
	if got := desc.Annotations["io.containerd.image.name"]; got != ref {
		t.Errorf("io.containerd.image.name %q, want %q", got, ref)
	}
	if got := desc.Annotations["org.opencontainers.image.ref.name"]; got != "dev" {
		t.Errorf("org.opencontainers.image.ref.name %q, want dev", got)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	images := map[string]v1.Image{}
	for _, d := range m.Manifests {
		if d.Platform == nil || d.Platform.OS != "linux" {
			t.Fatalf("manifest %s has platform %v, want linux/*", d.Digest, d.Platform)
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		images[d.Platform.Architecture] = img
	}
	return images
}

func configFile(t *testing.T, img v1.Image) *v1.ConfigFile {
	t.Helper()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

type file struct {
	hdr  *tar.Header
	data []byte
}

// flatten is the image's filesystem, by path without the leading slash.
func flatten(t *testing.T, img v1.Image) map[string]*file {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	files := map[string]*file{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatalf("reading the image's filesystem: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimSuffix(path.Clean(hdr.Name), "/")] = &file{hdr: hdr, data: data}
	}
}

// checkBase checks what every image's first layer gives: the users, a world-writable /tmp, and
// files that belong to root.
func checkBase(t *testing.T, files map[string]*file) {
	t.Helper()
	if f := files["etc/passwd"]; f == nil || !strings.Contains(string(f.data), "nonroot:x:65532:65532:") {
		t.Error("no nonroot (65532) in /etc/passwd")
	}
	if f := files["etc/group"]; f == nil || !strings.Contains(string(f.data), "nonroot:x:65532:") {
		t.Error("no nonroot (65532) in /etc/group")
	}
	if f := files["tmp"]; f == nil || f.hdr.Typeflag != tar.TypeDir || f.hdr.Mode&0o7777 != 0o1777 {
		t.Errorf("/tmp is not a directory with mode 1777: %+v", f)
	}
	for p, f := range files {
		// The user's home is the one thing it owns.
		if p != "home/nonroot" && (f.hdr.Uid != 0 || f.hdr.Gid != 0) {
			t.Errorf("/%s is owned by %d:%d, want root", p, f.hdr.Uid, f.hdr.Gid)
		}
	}
}

// checkStaticELF checks that data is an executable for arch with no program interpreter: the
// images have no loader.
func checkStaticELF(t *testing.T, data []byte, arch string) {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%s: not an ELF: %v", arch, err)
	}
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
	if f.Machine != want {
		t.Errorf("%s: ELF machine %v, want %v", arch, f.Machine, want)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s: the binary is dynamically linked (PT_INTERP)", arch)
		}
	}
}

// rootfs writes files to a new directory that every user may enter (as an image's root is), and
// returns it.
func rootfs(t *testing.T, files map[string]*file) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "image-rootfs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Parents sort before their children.
	for _, p := range slices.Sorted(maps.Keys(files)) {
		f, dst := files[p], filepath.Join(dir, p)
		mode := os.FileMode(f.hdr.Mode & 0o777)
		switch f.hdr.Typeflag {
		case tar.TypeDir:
			if f.hdr.Mode&0o1000 != 0 {
				mode |= os.ModeSticky
			}
			err = os.MkdirAll(dst, 0o755)
			if err == nil {
				err = os.Chmod(dst, mode)
			}
		case tar.TypeReg:
			err = os.WriteFile(dst, f.data, mode)
		case tar.TypeSymlink:
			err = os.Symlink(f.hdr.Linkname, dst)
		default:
			err = fmt.Errorf("unexpected tar entry type %q", f.hdr.Typeflag)
		}
		if err == nil && os.Geteuid() == 0 {
			err = os.Lchown(dst, f.hdr.Uid, f.hdr.Gid)
		}
		if err != nil {
			t.Fatalf("/%s: %v", p, err)
		}
	}
	return dir
}

// requireRoot skips (or fails, in the test bed) a check that needs root.
func requireRoot(t *testing.T, what string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if testbed.Required() {
		t.Fatalf("%s needs root", what)
	}
	t.Skipf("%s needs root", what)
}

// runAsNonroot runs the image's entry binary with -help as 65532, from the image's root
// filesystem: it must start and print its usage (the flag package exits 0 or 2 after it).
func runAsNonroot(t *testing.T, files map[string]*file, entry, usageFlag string) {
	t.Helper()
	requireRoot(t, "running as 65532")
	dir := rootfs(t, files)
	cmd := exec.Command("setpriv", "--reuid=65532", "--regid=65532", "--clear-groups", filepath.Join(dir, entry), "-help")
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 2) {
		t.Fatalf("%s -help as 65532: %v\n%s", entry, err, out)
	}
	if !strings.Contains(string(out), "Usage of") || !strings.Contains(string(out), usageFlag) {
		t.Errorf("%s -help as 65532 printed no usage with %s:\n%s", entry, usageFlag, out)
	}
}

// checkTestDaemon checks the test daemon image's contents, then runs the daemon containers the
// controller makes with it from its root filesystem (chroot, private mount namespace) and asks each
// daemon for its version over its socket.
func checkTestDaemon(t *testing.T, dir string) {
	images := platformImages(t, dir, registry+"guix-farm-test-daemon:dev")
	img, ok := images[runtime.GOARCH]
	if !ok || len(images) != 1 {
		t.Fatalf("platforms %v, want %s only (the build host's)", slices.Collect(maps.Keys(images)), runtime.GOARCH)
	}
	cfg := configFile(t, img)
	if cfg.Config.User != "0:0" || !slices.Equal(cfg.Config.Entrypoint, []string{testDaemonEntrypoint}) {
		t.Errorf("User %q, Entrypoint %q: want 0:0 and %s", cfg.Config.User, cfg.Config.Entrypoint, testDaemonEntrypoint)
	}
	files := flatten(t, img)
	checkBase(t, files)
	for link, target := range map[string]string{"usr/bin/nix-daemon": "nix", "usr/bin/nix-store": "nix", "usr/libexec/nix/build-remote": "../../bin/nix", "bin/sh": "busybox", "usr/local/bin/guix-daemon": "guix-farm-test-daemon"} {
		if f := files[link]; f == nil || f.hdr.Typeflag != tar.TypeSymlink || f.hdr.Linkname != target {
			t.Errorf("/%s is not a symlink to %s", link, target)
		}
	}
	checkStaticELF(t, files["bin/busybox"].data, runtime.GOARCH)
	checkLoadable(t, files, "usr/bin/nix")

	script := files[strings.TrimPrefix(testDaemonEntrypoint, "/")]
	if script == nil || script.hdr.Mode&0o111 == 0 {
		t.Fatalf("no executable %s", testDaemonEntrypoint)
	}
	// NIX_REMOTE in nix-daemon's environment fork-bombs the machine: never start it otherwise.
	s := string(script.data)
	unset, start := strings.Index(s, "\nunset NIX_REMOTE\n"), strings.Index(s, "\nexec nix-daemon")
	if unset < 0 || start < 0 || unset > start {
		t.Fatalf("%s does not unset NIX_REMOTE before it execs nix-daemon", testDaemonEntrypoint)
	}

	requireRoot(t, "starting the test daemon (chroot)")
	root := rootfs(t, files)
	for name, c := range daemonContainers(t) {
		t.Run(name, func(t *testing.T) { startTestDaemon(t, root, c) })
	}
}

// checkLoadable checks that the dynamic executable bin finds in the image its loader and, from its
// RUNPATH or the library directories, every library it needs, and those theirs.
func checkLoadable(t *testing.T, files map[string]*file, bin string) {
	t.Helper()
	byName := map[string][]string{}
	for p, f := range files {
		if f.hdr.Typeflag == tar.TypeReg {
			byName[path.Base(p)] = append(byName[path.Base(p)], p)
		}
	}
	seen := map[string]bool{}
	queue := []string{bin}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if seen[p] {
			continue
		}
		seen[p] = true
		f, err := elf.NewFile(bytes.NewReader(files[p].data))
		if err != nil {
			t.Fatalf("/%s: %v", p, err)
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				data, _ := io.ReadAll(prog.Open())
				interp := strings.TrimPrefix(strings.TrimRight(string(data), "\x00"), "/")
				if files[interp] == nil {
					t.Errorf("/%s: its loader /%s is not in the image", p, interp)
				}
			}
		}
		runpath, _ := f.DynString(elf.DT_RUNPATH)
		needed, err := f.ImportedLibraries()
		if err != nil {
			t.Fatalf("/%s: %v", p, err)
		}
		for _, lib := range needed {
			found := ""
			for _, candidate := range byName[lib] {
				d := "/" + path.Dir(candidate)
				if slices.Contains(strings.Split(strings.Join(runpath, ":"), ":"), d) || strings.HasPrefix(d, "/lib") || strings.HasPrefix(d, "/usr/lib") {
					found = candidate
				}
			}
			if found == "" {
				t.Errorf("/%s needs %s, which is not in the image", p, lib)
				continue
			}
			queue = append(queue, found)
		}
	}
	t.Logf("/%s loads %d shared objects, all in the image", bin, len(seen)-1)
}

// daemonContainers are the daemon containers the controller puts in an agent pod with the test
// daemon image: with the default command (guix-daemon and its arguments) and with the image's
// entrypoint as the pool's command (the settings in the environment only).
func daemonContainers(t *testing.T) map[string]corev1.Container {
	t.Helper()
	d := agentpool.Defaults{
		AgentImage:        registry + "guix-farm-agent:dev",
		DaemonImage:       registry + "guix-farm-test-daemon:dev",
		BucketURL:         "http://127.0.0.1:1/farm-bucket",
		SubstituteURLs:    []string{"http://127.0.0.1:1/other"},
		TrustedPublicKeys: []string{"farm-test-1:" + strings.Repeat("A", 43) + "="},
		DaemonArgs:        []string{"--build-users-group=guixbuild"}, // the chart's default
		SystemArch:        agentpool.DefaultSystemArch(),
	}
	containers := map[string]corev1.Container{}
	for name, spec := range map[string]*farmv1.DaemonSpec{
		"default command":  nil,
		"image entrypoint": {Command: []string{testDaemonEntrypoint}},
	} {
		pool := &farmv1.AgentPool{
			ObjectMeta: metav1.ObjectMeta{Name: "x86-64", Namespace: "guix-farm"},
			Spec:       farmv1.AgentPoolSpec{Systems: []string{"x86_64-linux"}, MaxParallelBuilds: 2, Daemon: spec},
		}
		tpl, ferr := agentpool.PodTemplate(pool, d)
		if ferr != nil {
			t.Fatalf("%s: the pod template: %v", name, ferr)
		}
		i := slices.IndexFunc(tpl.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == agentpool.DaemonContainer })
		if i < 0 {
			t.Fatalf("%s: no daemon container in the pod template", name)
		}
		containers[name] = tpl.Spec.InitContainers[i]
	}
	return containers
}

// startTestDaemon runs the daemon container c (its command, arguments and environment) in the
// image's root filesystem dir, checks the nix.conf it writes and asks the daemon for its version.
func startTestDaemon(t *testing.T, dir string, c corev1.Container) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	socket := filepath.Join(dir, daemonSocket)
	os.Remove(socket) // a previous run's
	argv := append(append([]string{"-m", "--propagation", "private", "chroot", dir}, c.Command...), c.Args...)
	if len(c.Command) == 0 {
		t.Fatal("the daemon container has no command")
	}
	cmd := exec.CommandContext(ctx, "unshare", argv...)
	// The image's PATH, then the container's variables. No NIX_REMOTE: see checkTestDaemon.
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	for _, e := range c.Env {
		cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
	}
	logs, err := os.Create(filepath.Join(t.TempDir(), "daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	cmd.Stdout, cmd.Stderr = logs, logs
	daemonLog := func() string { data, _ := os.ReadFile(logs.Name()); return string(data) }
	// Its own process group, killed whole: the daemon forks a worker per connection.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}()

	for {
		if _, err := os.Stat(socket); err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("the test daemon exited: %v\n%s", err, daemonLog())
		case <-ctx.Done():
			t.Fatalf("no socket %s: %s", daemonSocket, daemonLog())
		case <-time.After(50 * time.Millisecond):
		}
	}
	conf, err := os.ReadFile(filepath.Join(dir, "etc/nix/nix.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		// Each URL once, though the default command has them in its arguments and environment.
		"\nsubstituters = http://127.0.0.1:1/farm-bucket http://127.0.0.1:1/other\n",
		"\ntrusted-public-keys = farm-test-1:",
		"\nrequire-sigs = true\n", "\nsandbox = true\n", "\nbuild-users-group =\n", "\nmax-jobs = 2\n",
	} {
		if !strings.Contains("\n"+string(conf), want) {
			t.Errorf("nix.conf lacks %q:\n%s", strings.TrimSpace(want), conf)
		}
	}

	nix := testbed.Tool(t, "nix", "nix")
	ping := exec.CommandContext(ctx, nix, "--extra-experimental-features", "nix-command", "store", "ping", "--store", "unix://"+socket)
	ping.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "NIX_STORE_DIR=/gnu/store"}
	out, err := ping.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Version: 2.") {
		t.Fatalf("nix store ping over %s: %v\n%s\ndaemon: %s", daemonSocket, err, out, daemonLog())
	}
}
