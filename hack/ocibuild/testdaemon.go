package main

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// testDaemonEntrypointScript writes nix.conf from the environment and starts nix-daemon with
// Guix's directories (see the script).
//
//go:embed test-daemon-entrypoint.sh
var testDaemonEntrypointScript []byte

const (
	testDaemonEntrypoint = "/usr/local/bin/guix-farm-test-daemon"
	// hostBusybox is Debian's busybox-static: the test daemon image's shell and coreutils.
	hostBusybox = "/bin/busybox"
	// missingNix says what installs the host programs the test daemon image is made of.
	missingNix = "the test daemon image is made of the build host's nix-bin and busybox-static (hack/tools.sh nix installs them)"
)

// testDaemonLayers are the layers of guix-farm-test-daemon after the base: busybox, Nix with the
// shared libraries it loads, and the entrypoint, from the least to the most often changed.
func testDaemonLayers(ctx context.Context) ([]layerSpec, error) {
	busybox, err := busyboxTree(ctx)
	if err != nil {
		return nil, err
	}
	nix, err := nixTree(ctx)
	if err != nil {
		return nil, err
	}
	entry := newTree()
	entry.file(testDaemonEntrypoint, 0o755, testDaemonEntrypointScript)
	entry.symlink("/usr/local/bin/guix-daemon", filepath.Base(testDaemonEntrypoint))
	return []layerSpec{
		{busybox, "busybox-static as /bin/sh and its applets"},
		{nix, "nix-daemon and nix-store (Debian's nix-bin) with their shared libraries and loader"},
		{entry, "the entrypoint " + testDaemonEntrypoint + ", also guix-daemon"},
	}, nil
}

// busyboxTree is the static busybox with a symlink for each applet it has, in /bin.
func busyboxTree(ctx context.Context) (*tree, error) {
	if err := requireStatic(hostBusybox); err != nil {
		return nil, fmt.Errorf("%w (%s)", err, missingNix)
	}
	t := newTree()
	if err := t.hostFile(hostBusybox, hostBusybox); err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, hostBusybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("listing busybox's applets: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" {
			t.symlink("/bin/"+applet, "busybox")
		}
	}
	return t, nil
}

// nixTree is the host's nix (one binary: nix-daemon and nix-store are names of it) at
// /usr/bin/nix, and every shared object ldd says it loads, the dynamic loader included, each at
// the path ldd gives: the loader finds them there with no ld.so.cache.
func nixTree(ctx context.Context) (*tree, error) {
	daemon, err := exec.LookPath("nix-daemon")
	if err != nil {
		return nil, fmt.Errorf("nix-daemon: %w (%s)", err, missingNix)
	}
	nix, err := filepath.EvalSymlinks(daemon)
	if err != nil {
		return nil, fmt.Errorf("nix-daemon: %w", err)
	}
	t := newTree()
	if err := t.hostFile("/usr/bin/nix", nix); err != nil {
		return nil, err
	}
	for _, name := range []string{"nix-daemon", "nix-store"} {
		t.symlink("/usr/bin/"+name, "nix")
	}
	// Nix's build hook, also a name of the binary: Nix 2.8 starts it for every build (it declines
	// when no remote builders are set), and without it every build fails with "executing
	// '/usr/libexec/nix/build-remote': No such file or directory" (found by test/node).
	t.symlink("/usr/libexec/nix/build-remote", "../../bin/nix")
	libs, err := sharedObjects(ctx, nix)
	if err != nil {
		return nil, err
	}
	for _, lib := range libs {
		if err := t.hostFile(lib, lib); err != nil {
			return nil, err
		}
		if filepath.Base(lib) != "libc.so.6" {
			continue
		}
		// The name service modules next to libc, which nix-daemon dlopens (it preloads nss_dns
		// for the builds that fetch over the network) and ldd cannot see.
		for _, m := range []string{"libnss_files.so.2", "libnss_dns.so.2"} {
			p := filepath.Join(filepath.Dir(lib), m)
			if _, err := os.Stat(p); err == nil {
				if err := t.hostFile(p, p); err != nil {
					return nil, err
				}
			}
		}
	}
	t.file("/etc/nsswitch.conf", 0o644, []byte("passwd: files\ngroup: files\nhosts: files dns\n"))
	return t, nil
}

// sharedObjects are the absolute paths in ldd's output for bin: "libz.so.1 => /lib/.../libz.so.1
// (0x...)" and the loader's "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
func sharedObjects(ctx context.Context, bin string) ([]string, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "ldd", bin)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w: %s", bin, err, stderr.String())
	}
	var paths []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.Contains(line, "not found") {
			return nil, fmt.Errorf("ldd %s: %s", bin, line)
		}
		if _, after, ok := strings.Cut(line, "=> "); ok {
			line = after
		}
		if p, _, _ := strings.Cut(line, " "); strings.HasPrefix(p, "/") {
			paths = append(paths, p)
		}
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("ldd %s listed no shared objects: %s", bin, out)
	}
	return paths, nil
}
