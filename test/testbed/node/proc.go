package node

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// mountNS names a process's mount namespace ("mnt:[4026532...]"), "" if it is gone.
func mountNS(pid int) string {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return ""
	}
	return ns
}

// alive says whether pid runs (a zombie has finished: only its parent's wait is missing).
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may hold anything.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// markerEnv is set in the environment of every process a node starts, to the node's state
// directory: the environment survives exec (the holder ends as "sleep infinity", which names
// nothing) and containerd passes it on to the shims.
const markerEnv = "GUIXFARM_NODE_STATE"

// nodeProcesses are the processes a node started that still run: those in its mount namespace
// (its holder, containerd, the kubelet, the shims, and the mount helpers they run), and those
// whose environment carries its marker or whose command line names its state directory (a
// namespace that was never recorded, or a process that left it). Containers are not among them:
// runc gives each its own mount namespace and environment; Down kills them through runc and
// their cgroups.
func nodeProcesses(dir, ns string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	marker := []byte(markerEnv + "=" + dir + "\x00")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || !alive(pid) {
			continue
		}
		if ns != "" && mountNS(pid) == ns {
			pids = append(pids, pid)
			continue
		}
		if dir == "" {
			continue
		}
		if environ, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ")); err == nil && bytes.Contains(environ, marker) {
			pids = append(pids, pid)
			continue
		}
		// dir+"/": every path the node's processes are given is below it, and a bare prefix
		// could match another directory (/tmp/gfnode1 in /tmp/gfnode12).
		if cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && bytes.Contains(cmdline, []byte(dir+"/")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ours says whether pid is still a process of the node (not a new process that reused the
// number since it was recorded).
func ours(pid int, dir, ns string) bool {
	for _, p := range nodeProcesses(dir, ns) {
		if p == pid {
			return true
		}
	}
	return false
}

// stopPID sends SIGTERM, then SIGKILL after grace, and waits up to 10 s more for it to end.
func stopPID(pid int, grace time.Duration) error {
	if !alive(pid) {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	if waitGone(grace, pid) {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if waitGone(10*time.Second, pid) {
		return nil
	}
	return fmt.Errorf("process %d did not exit after SIGKILL", pid)
}

// waitGone waits up to d until none of pids runs.
func waitGone(d time.Duration, pids ...int) bool {
	deadline := time.Now().Add(d)
	for {
		running := false
		for _, p := range pids {
			if alive(p) {
				running = true
				break
			}
		}
		if !running {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mountsUnder lists the mount points at or below dir in this process's mount namespace, deepest
// first (the order they can be unmounted in).
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	var mps []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mps = append(mps, mp)
		}
	}
	// Later lines are mounted later, so on top of (or below) earlier ones.
	for i, j := 0, len(mps)-1; i < j; i, j = i+1, j-1 {
		mps[i], mps[j] = mps[j], mps[i]
	}
	return mps, nil
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space, and so on).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountAll detaches every mount at or below dir, deepest first.
func unmountAll(dir string) error {
	mps, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, mp := range mps {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// tail returns the last n bytes of a file, for error messages.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return string(data)
}
