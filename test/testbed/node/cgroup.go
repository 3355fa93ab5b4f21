package node

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupMounts are the mount points of the host's cgroup hierarchies: v1 (one per controller set
// here) and the v2 one a hybrid host also has, where runc places containers too.
func cgroupMounts() ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	var mps []string
	for _, line := range strings.Split(string(data), "\n") {
		// ... mount-point ... - fstype source options
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, p := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(p) < 1 || (p[0] != "cgroup" && p[0] != "cgroup2") {
			continue
		}
		mps = append(mps, unescapeMountinfo(f[4]))
	}
	return mps, nil
}

// makeCgroupRoot creates the cgroup every pod's containers go under (the kubelet's cgroupRoot,
// which it requires to exist) in each hierarchy. A new cpuset cgroup has no CPUs or memory nodes,
// and no process can join one until they are set: it gets its parent's.
func makeCgroupRoot(name string) error {
	mps, err := cgroupMounts()
	if err != nil {
		return err
	}
	for _, mp := range mps {
		dir := filepath.Join(mp, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			parent, err := os.ReadFile(filepath.Join(mp, f))
			if err != nil {
				continue // not the cpuset hierarchy
			}
			if err := os.WriteFile(filepath.Join(dir, f), parent, 0o644); err != nil {
				return fmt.Errorf("setting %s of cgroup %s: %w", f, dir, err)
			}
		}
	}
	return nil
}

// removeCgroupRoot kills whatever still runs in the cgroup (containers runc could not delete)
// and removes it and its children in every hierarchy.
func removeCgroupRoot(name string) error {
	if name == "" || name == "/" {
		return nil
	}
	mps, err := cgroupMounts()
	if err != nil {
		return err
	}
	var errs []error
	for _, mp := range mps {
		root := filepath.Join(mp, name)
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		// Children before parents: rmdir refuses a cgroup with children.
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			if err := rmCgroup(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// rmCgroup kills the processes of one cgroup and removes it, retrying while they exit.
func rmCgroup(dir string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		for _, f := range strings.Fields(string(procs)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("removing cgroup %s (processes: %q): %w", dir, strings.TrimSpace(string(procs)), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
