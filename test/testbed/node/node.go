// Package node runs a single Kubernetes node on this machine, registered with a given apiserver:
// containerd, runc, a kubelet and the CNI plugins built from the pinned sources (hack/tools.sh
// node), with images imported from OCI archives (there is no registry). The farm's pods use the
// host network, where the test bed's loopback servers (apiserver, MinIO) are; other pods get an
// address on an isolated bridge (see cniConflist), which is mostly there so the node is Ready.
//
// Everything the node writes is under its state directory, except: empty mount points it creates
// on the host if missing (/var/lib/kubelet, /var/log/containers, /var/lib/cni), a cgroup named
// after the state directory in each hierarchy, the pod network's bridge gfnode-br0, the lock
// file /run/lock/guixfarm-node.lock (one node per host) and, only where the host has no usable
// address or one is asked for, an interface gfnode0 holding the node's address. The kubelet and
// containerd run in a private mount namespace where those three hard-wired paths are bind mounts
// of directories in the state directory, so that the host sees none of their files, and every
// mount the node makes (volumes, container root filesystems, network namespaces) goes away with
// the namespace even when the node is killed. Down removes all of it; Up first removes whatever a
// node that was not brought down left behind.
package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/guixfarm/guix-farm/test/testbed"
)

// Config describes a node.
type Config struct {
	// StateDir holds everything the node writes (created; removed by Down). It must be short:
	// the shims' socket directory, StateDir/s, may be at most 42 bytes long.
	StateDir string
	// Kubeconfig is the kubelet's (copied into StateDir): it registers the node and runs pods
	// with these credentials, so they must allow that (an admin's do).
	Kubeconfig string
	// ToolsBin holds Tools.
	ToolsBin string
	// Busybox is the static busybox the pause image is made of (default /bin/busybox).
	Busybox string
	// Name is the node's name (default node1).
	Name string
	// NodeIP is the address the node reports and the kubelet serves on (logs, exec); default:
	// the host's first global IPv4 address, or DummyIP (default DefaultDummyIP) on an interface of
	// its own if it has none.
	NodeIP string
	// DummyIP makes the node an interface of its own (an empty bridge) with this address (a
	// /32) even when the host has an address: the kubelet refuses a loopback node IP.
	DummyIP string
	// Labels are the node's labels (default kubernetes.io/arch=<GOARCH>).
	Labels map[string]string
	// Images are oci-archives to import, besides the pause image Up makes itself.
	Images []string
	// Detach leaves the processes running when the caller exits (hack/node.sh up); otherwise
	// they are killed with it.
	Detach bool
	// LockWait bounds the wait for another node on this host to go (default 5 minutes).
	LockWait time.Duration
	// Logf reports progress (default: nothing).
	Logf func(format string, args ...any)
}

// Node is a running node.
type Node struct {
	Config
	// Socket is containerd's; CgroupRoot the cgroup the pods run under.
	Socket, CgroupRoot string

	l    layout
	st   state
	lock *os.File
	done []chan struct{} // attached: closed once a process is reaped
}

// state is what Down needs to find and remove a node, also from another process (hack/node.sh
// down) or after a crash (the next Up): written to StateDir/state.json as soon as each part
// exists.
type state struct {
	Name                                 string
	HolderPID, ContainerdPID, KubeletPID int
	MountNS                              string
	CgroupRoot                           string
	CreatedDirs                          []string
	DummyLink, Bridge                    string
}

// LockFile serialises nodes on this host: the kubelet's device-plugin socket and the container
// log links have fixed paths, and two nodes would also fight over ports and the pods' host
// network. It holds the state directory of the node that has it, so that a node that was not
// brought down is found and removed by the next.
const LockFile = "/run/lock/guixfarm-node.lock"

const dummyLink = "gfnode0"

// DefaultDummyIP is the address of the node's own interface when it needs one (a private one no
// other part of the test bed uses).
const DefaultDummyIP = "10.254.254.1"

// hostMounts are the paths that no flag or setting moves, bind-mounted from the state directory
// in the node's mount namespace.
func (l layout) hostMounts() [][2]string {
	return [][2]string{
		{l.path("host", "var-lib-kubelet"), "/var/lib/kubelet"},       // the kubelet's device-plugins/kubelet.sock
		{l.path("host", "var-log-containers"), "/var/log/containers"}, // the kubelet's links to the pod logs
		{l.path("host", "var-lib-cni"), "/var/lib/cni"},               // the CNI library's cache of results
	}
}

// Up starts a node and returns once its Node object is Ready. On failure it removes what it
// started.
func Up(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	n := &Node{Config: cfg, l: layout{dir: cfg.StateDir}}
	n.Socket = n.l.containerdSocket()
	n.CgroupRoot = "/guixfarm-" + filepath.Base(cfg.StateDir)
	n.st = state{Name: cfg.Name, CgroupRoot: n.CgroupRoot, Bridge: bridgeLink}
	if err := n.up(ctx); err != nil {
		if derr := n.Down(); derr != nil {
			err = fmt.Errorf("%w (and removing the node: %v)", err, derr)
		}
		return nil, err
	}
	return n, nil
}

func (c *Config) defaults() error {
	if os.Geteuid() != 0 {
		return errors.New("a node needs root (mount namespaces, cgroups, containers)")
	}
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("the node's state directory %q is not an absolute path", c.StateDir)
	}
	c.StateDir = filepath.Clean(c.StateDir)
	if d := (layout{dir: c.StateDir}).shimSocketDir(); len(d) > maxShimSocketDir {
		return fmt.Errorf("state directory %s is too long: the shims' socket directory %s must fit in %d bytes", c.StateDir, d, maxShimSocketDir)
	}
	if c.Kubeconfig == "" {
		return errors.New("no kubeconfig for the kubelet")
	}
	if c.ToolsBin == "" {
		c.ToolsBin = testbed.ToolsBin()
	}
	for _, b := range Tools {
		if fi, err := os.Stat(filepath.Join(c.ToolsBin, b)); err != nil || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%s is not in %s: run hack/tools.sh node", b, c.ToolsBin)
		}
	}
	if c.Busybox == "" {
		c.Busybox = "/bin/busybox"
	}
	if c.Name == "" {
		c.Name = "node1"
	}
	if c.Labels == nil {
		c.Labels = map[string]string{"kubernetes.io/arch": runtime.GOARCH}
	}
	if c.LockWait == 0 {
		c.LockWait = 5 * time.Minute
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	return nil
}

// Tools are the binaries a node runs, from hack/tools.sh node.
var Tools = []string{"kubelet", "containerd", "containerd-shim-runc-v2", "runc", "ctr", "cni/bridge", "cni/host-local", "cni/loopback"}

func (n *Node) up(ctx context.Context) error {
	start := time.Now()
	if err := n.acquireLock(ctx); err != nil {
		return err
	}
	if err := n.prepareDirs(); err != nil {
		return err
	}
	if err := n.nodeIP(); err != nil {
		return err
	}
	if err := makeCgroupRoot(n.CgroupRoot); err != nil {
		return err
	}
	if err := n.writeConfigs(); err != nil {
		return err
	}
	if err := n.startHolder(); err != nil {
		return err
	}
	if err := n.startContainerd(ctx); err != nil {
		return err
	}
	if err := n.importImages(ctx); err != nil {
		return err
	}
	if err := n.startKubelet(ctx); err != nil {
		return err
	}
	n.Logf("node %s is up (%s), state in %s", n.Name, time.Since(start).Round(100*time.Millisecond), n.StateDir)
	return nil
}

// acquireLock takes LockFile, waiting for another node to go, and removes what a node that held
// it before and was not brought down left behind. The holder process inherits the lock, so it is
// held as long as the node runs, also after the process that started a detached node exits.
func (n *Node) acquireLock(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(LockFile), 0o755); err != nil {
		return fmt.Errorf("creating the node lock's directory: %w", err)
	}
	f, err := os.OpenFile(LockFile, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("opening the node lock: %w", err)
	}
	deadline := time.Now().Add(n.LockWait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return fmt.Errorf("locking %s: %w", LockFile, err)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			holder, _ := os.ReadFile(LockFile)
			f.Close()
			return fmt.Errorf("another node is up on this host (state directory %q, per %s) after waiting %s: hack/node.sh down --state-dir %[1]s stops it",
				strings.TrimSpace(string(holder)), LockFile, n.LockWait)
		}
		time.Sleep(time.Second)
	}
	n.lock = f
	prev, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("reading %s: %w", LockFile, err)
	}
	if p := strings.TrimSpace(string(prev)); p != "" && p != n.StateDir {
		if _, err := os.Stat(filepath.Join(p, "state.json")); err == nil {
			n.Logf("removing what the node in %s left behind", p)
			if err := down(layout{dir: p}, n.Logf); err != nil {
				return fmt.Errorf("removing the earlier node in %s: %w", p, err)
			}
		}
	}
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("writing %s: %w", LockFile, err)
	}
	if _, err := f.WriteAt([]byte(n.StateDir+"\n"), 0); err != nil {
		return fmt.Errorf("writing %s: %w", LockFile, err)
	}
	return nil
}

func (n *Node) prepareDirs() error {
	if _, err := os.Stat(n.l.stateFile()); err == nil {
		// A node that was not brought down, in this very directory.
		if err := down(n.l, n.Logf); err != nil {
			return fmt.Errorf("removing the earlier node in %s: %w", n.StateDir, err)
		}
	}
	// Down removes the whole directory: it must hold nothing but the node's, and the state file
	// that tells Down the directory is a node's comes first.
	if ents, err := os.ReadDir(n.StateDir); err == nil && len(ents) > 0 {
		return fmt.Errorf("state directory %s is not empty (and holds no node): give a new or empty one", n.StateDir)
	}
	if err := os.MkdirAll(n.StateDir, 0o755); err != nil {
		return fmt.Errorf("creating the node's state directory: %w", err)
	}
	if err := n.saveState(); err != nil {
		return err
	}
	for _, d := range []string{n.l.logDir(), n.l.path("containerd"), n.l.runcRoot(), n.l.kubeletRoot(), n.l.podLogs(),
		n.l.imagesDir(), n.l.shimSocketDir(), n.l.path("cni", "net.d")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	for _, m := range n.l.hostMounts() {
		if err := os.MkdirAll(m[0], 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", m[0], err)
		}
		if _, err := os.Stat(m[1]); err == nil {
			continue
		}
		if err := os.MkdirAll(m[1], 0o755); err != nil {
			return fmt.Errorf("creating the mount point %s on the host: %w", m[1], err)
		}
		n.st.CreatedDirs = append(n.st.CreatedDirs, m[1])
	}
	return n.saveState()
}

func (n *Node) saveState() error {
	data, err := json.MarshalIndent(n.st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(n.l.stateFile(), data, 0o644); err != nil {
		return fmt.Errorf("writing the node's state: %w", err)
	}
	return nil
}

// nodeIP picks the node's address: the kubelet refuses a loopback one, and serves logs and exec
// to the apiserver on it.
func (n *Node) nodeIP() error {
	if n.NodeIP != "" && n.DummyIP == "" {
		return nil
	}
	if n.DummyIP == "" {
		if ip := hostIPv4(); ip != "" {
			n.NodeIP = ip
			return nil
		}
		n.DummyIP = DefaultDummyIP
	}
	for _, args := range [][]string{
		// An empty bridge rather than a dummy interface: the test bed's kernel has no dummy
		// driver, and a bridge without ports holds a local address just as well.
		{"link", "add", dummyLink, "type", "bridge"},
		{"addr", "add", n.DummyIP + "/32", "dev", dummyLink},
		{"link", "set", dummyLink, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("making the dummy interface for the node's address: ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
		if args[1] == "add" && args[0] == "link" {
			n.st.DummyLink = dummyLink
			if err := n.saveState(); err != nil {
				return err
			}
		}
	}
	n.NodeIP = n.DummyIP
	return nil
}

func hostIPv4() string {
	ifs, err := net.Interfaces()
	if err != nil {
		return ""
	}
	for _, i := range ifs {
		if i.Flags&net.FlagUp == 0 || i.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && ipn.IP.IsGlobalUnicast() {
				return ipn.IP.String()
			}
		}
	}
	return ""
}

func (n *Node) writeConfigs() error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	d := configData{
		CNIBin: filepath.Join(n.ToolsBin, "cni"), Bridge: bridgeLink, PodSubnet: podSubnet,
		Dir: n.StateDir, Socket: n.Socket, ShimSockets: n.l.shimSocketDir(), Pause: PauseImage,
		Runc: filepath.Join(n.ToolsBin, "runc"), RuncRoot: n.l.runcRoot(), CgroupRoot: n.CgroupRoot,
		NodeIP: n.NodeIP, PodLogs: n.l.podLogs(), Port: ports[0], HealthzPort: ports[1],
	}
	for _, f := range []struct {
		path string
		data func() ([]byte, error)
	}{
		{n.l.containerdConfig(), func() ([]byte, error) { return render(containerdTOML, d) }},
		{n.l.kubeletConfig(), func() ([]byte, error) { return render(kubeletYAML, d) }},
		{n.l.path("cni", "net.d", "10-guixfarm-node.conflist"), func() ([]byte, error) { return render(cniConflist, d) }},
		{n.l.kubeconfig(), func() ([]byte, error) { return os.ReadFile(n.Kubeconfig) }},
	} {
		data, err := f.data()
		if err != nil {
			return err
		}
		if err := os.WriteFile(f.path, data, 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", f.path, err)
		}
	}
	return nil
}

// freePorts returns n TCP ports that were free a moment ago: the kubelet's server and healthz
// ports, away from the defaults another kubelet or test may hold.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", ":0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// startHolder starts the process that holds the node's mount namespace (and the lock): unshare
// with private propagation, the kubelet's fixed paths bind-mounted from the state directory, then
// sleep. containerd and the kubelet join the namespace through nsenter.
func (n *Node) startHolder() error {
	script := "set -e\n"
	args := []string{}
	for i, m := range n.l.hostMounts() {
		script += fmt.Sprintf("mount --bind \"$%d\" %s\n", i+1, m[1])
		args = append(args, m[0])
	}
	script += "exec sleep infinity\n"
	pid, err := n.start("holder", append([]string{"unshare", "-m", "--propagation", "private", "--", "sh", "-c", script, "sh"}, args...), n.lock)
	if err != nil {
		return err
	}
	n.st.HolderPID = pid
	// Ready once sh has exec'd sleep, i.e. the mounts are made.
	deadline := time.Now().Add(10 * time.Second)
	for {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == "sleep" {
			break
		}
		if !alive(pid) || time.Now().After(deadline) {
			return fmt.Errorf("the mount namespace holder did not start: %s", tail(n.logFile("holder"), 2000))
		}
		time.Sleep(20 * time.Millisecond)
	}
	n.st.MountNS = mountNS(pid)
	if n.st.MountNS == "" || n.st.MountNS == mountNS(os.Getpid()) {
		return fmt.Errorf("the holder (pid %d) is not in a mount namespace of its own (%q)", pid, n.st.MountNS)
	}
	return n.saveState()
}

func (n *Node) logFile(name string) string { return filepath.Join(n.l.logDir(), name+".log") }

// start runs argv with its output in StateDir/logs/<name>.log, extra files passed from fd 3, and
// returns its pid. An attached process gets SIGKILL when the thread that started it (so the test)
// goes.
func (n *Node) start(name string, argv []string, extra ...*os.File) (int, error) {
	log, err := os.OpenFile(n.logFile(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("opening the log of %s: %w", name, err)
	}
	defer log.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{"PATH=" + n.ToolsBin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
		markerEnv + "=" + n.StateDir}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Dir = n.StateDir
	cmd.ExtraFiles = extra
	if n.Detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting %s: %w", name, err)
	}
	pid := cmd.Process.Pid
	if n.Detach {
		_ = cmd.Process.Release() // init reaps it once this process is gone
		return pid, nil
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	n.done = append(n.done, done)
	return pid, nil
}

// inNS is argv run in the node's mount namespace.
func (n *Node) inNS(argv ...string) []string {
	return append([]string{"nsenter", "-t", strconv.Itoa(n.st.HolderPID), "-m", "--"}, argv...)
}

func (n *Node) startContainerd(ctx context.Context) error {
	pid, err := n.start("containerd", n.inNS(filepath.Join(n.ToolsBin, "containerd"), "--config", n.l.containerdConfig()))
	if err != nil {
		return err
	}
	n.st.ContainerdPID = pid
	if err := n.saveState(); err != nil {
		return err
	}
	return n.waitFor(ctx, 30*time.Second, "containerd to serve", n.st.ContainerdPID, "containerd", func() (bool, string) {
		out, err := n.ctr(ctx, "version")
		return err == nil, fmt.Sprintf("%v: %s", err, out)
	})
}

// ctr runs ctr against the node's containerd, in the CRI's namespace.
func (n *Node) ctr(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(n.ToolsBin, "ctr"), append([]string{"--address", n.Socket, "--namespace", "k8s.io"}, args...)...)
	return cmd.CombinedOutput()
}

// importImages makes the pause image and imports it and Config.Images: there is no registry, so
// pods name these with imagePullPolicy Never (or IfNotPresent).
func (n *Node) importImages(ctx context.Context) error {
	pause := filepath.Join(n.l.imagesDir(), "pause.tar")
	files, err := testbed.BusyboxFiles(n.Busybox)
	if err != nil {
		return err
	}
	// The sandbox only holds the pod's namespaces. containerd stops it with SIGKILL, so a
	// sleep that ignores SIGTERM (as pid 1 does without a handler) is enough.
	if err := testbed.WriteOCIArchive(pause, testbed.OCIImage{Ref: PauseImage, Files: files, Entrypoint: []string{"/bin/sleep", "infinity"}}); err != nil {
		return err
	}
	for _, img := range append([]string{pause}, n.Images...) {
		abs, err := filepath.Abs(img)
		if err != nil {
			return err
		}
		t := time.Now()
		if out, err := n.ctr(ctx, "images", "import", abs); err != nil {
			return fmt.Errorf("importing %s into the node's containerd: %w: %s", img, err, out)
		}
		n.Logf("imported %s (%s)", img, time.Since(t).Round(10*time.Millisecond))
	}
	return nil
}

func (n *Node) startKubelet(ctx context.Context) error {
	labels := make([]string, 0, len(n.Labels))
	for k, v := range n.Labels {
		labels = append(labels, k+"="+v)
	}
	sort.Strings(labels)
	pid, err := n.start("kubelet", n.inNS(filepath.Join(n.ToolsBin, "kubelet"),
		"--config", n.l.kubeletConfig(), "--kubeconfig", n.l.kubeconfig(),
		"--root-dir", n.l.kubeletRoot(), "--cert-dir", n.l.path("kubelet", "pki"),
		"--hostname-override", n.Name, "--node-ip", n.NodeIP, "--node-labels", strings.Join(labels, ","),
		"--v", "2"))
	if err != nil {
		return err
	}
	n.st.KubeletPID = pid
	if err := n.saveState(); err != nil {
		return err
	}
	cs, err := n.Clientset()
	if err != nil {
		return err
	}
	// Ready: registered, with the runtime and its network up (pods are scheduled to it once a
	// controller-manager lifts the not-ready taint the kubelet registers it with).
	return n.waitFor(ctx, 90*time.Second, "node "+n.Name+" to be Ready", n.st.KubeletPID, "kubelet", func() (bool, string) {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		node, err := cs.CoreV1().Nodes().Get(c, n.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue, fmt.Sprintf("Ready %s: %s", cond.Status, cond.Message)
			}
		}
		return false, "no Ready condition yet"
	})
}

// Clientset is a client with the kubelet's credentials.
func (n *Node) Clientset() (*kubernetes.Clientset, error) { return clientset(n.l) }

func clientset(l layout) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", l.kubeconfig())
	if err != nil {
		return nil, fmt.Errorf("reading the node's kubeconfig: %w", err)
	}
	return kubernetes.NewForConfig(cfg)
}

// waitFor polls cond until it holds, the process pid (name) exits, or d passes.
func (n *Node) waitFor(ctx context.Context, d time.Duration, what string, pid int, name string, cond func() (bool, string)) error {
	deadline := time.Now().Add(d)
	for {
		ok, why := cond()
		if ok {
			return nil
		}
		if !alive(pid) {
			return fmt.Errorf("waiting for %s: %s exited; its log ends:\n%s", what, name, tail(n.logFile(name), 4000))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("waiting for %s: not after %s (%s); the %s log ends:\n%s", what, d, why, name, tail(n.logFile(name), 4000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Logs returns the last max bytes of the log of "kubelet", "containerd" or "holder".
func (n *Node) Logs(name string, max int) string { return tail(n.logFile(name), max) }

// ContainerLogs returns the last max bytes of the log of each container the node ran for the
// pod (every restart), read from the kubelet's pod log directory: for a failing test's report,
// also when the apiserver cannot serve them.
func (n *Node) ContainerLogs(namespace, pod string, max int) map[string]string {
	logs := map[string]string{}
	files, _ := filepath.Glob(filepath.Join(n.l.podLogs(), namespace+"_"+pod+"_*", "*", "*.log"))
	for _, f := range files {
		container := filepath.Base(filepath.Dir(f))
		logs[container+"/"+filepath.Base(f)] = tail(f, max)
	}
	return logs
}

// PodDir is where the kubelet keeps a pod's volumes (volumes/<plugin>/<name>) on the host.
func (n *Node) PodDir(uid string) string { return filepath.Join(n.l.kubeletRoot(), "pods", uid) }

// Down stops the node and removes everything it made (see the package comment), and the Node
// object when the apiserver still answers.
func (n *Node) Down() error {
	var errs []error
	if _, err := os.Stat(n.l.stateFile()); err == nil { // else nothing of the node's is there
		if err := down(n.l, n.Logf); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range n.done {
		select {
		case <-d:
		case <-time.After(10 * time.Second):
			errs = append(errs, errors.New("a node process was not reaped 10 s after it was killed"))
		}
	}
	n.done = nil
	if n.lock != nil {
		releaseLock(n.lock, n.StateDir)
		n.lock = nil
	}
	return errors.Join(errs...)
}

// deleteNodeObject deletes the node's Node object if the apiserver still answers (within 5 s): a
// later node of the same name starts afresh.
func deleteNodeObject(l layout, name string) error {
	cs, err := clientset(l)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = cs.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// releaseLock clears the lock's record of dir (so no later node cleans up after it) and unlocks.
func releaseLock(f *os.File, dir string) {
	if cur, err := os.ReadFile(LockFile); err == nil && strings.TrimSpace(string(cur)) == dir {
		_ = f.Truncate(0)
	}
	f.Close()
}

// Down stops the node whose state directory is dir (started by another process, e.g. hack/node.sh
// up) and removes everything it made.
func Down(dir string, logf func(string, ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	l := layout{dir: filepath.Clean(dir)}
	if _, err := os.Stat(l.stateFile()); err != nil {
		return fmt.Errorf("no node in %s: %w", dir, err)
	}
	if err := down(l, logf); err != nil {
		return err
	}
	// The holder held the lock; it is gone, so this takes it at once.
	if f, err := os.OpenFile(LockFile, os.O_RDWR, 0); err == nil {
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			releaseLock(f, l.dir)
		} else {
			f.Close()
		}
	}
	return nil
}

// down is the teardown, in the order that leaves nothing behind whatever state the node is in:
// the kubelet first (it would restart containers), then every container through runc (which
// kills it and removes its cgroups), containerd and the remaining processes of the namespace
// (the shims, the holder: with the last one the namespace and its mounts go), then what is left
// on the host.
func down(l layout, logf func(string, ...any)) error {
	var st state
	data, err := os.ReadFile(l.stateFile())
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("reading the node's state: %w", err)
	}
	if len(data) > 0 {
		if err := json.Unmarshal(data, &st); err != nil {
			return fmt.Errorf("reading the node's state %s: %w", l.stateFile(), err)
		}
	}
	var errs []error
	if st.KubeletPID != 0 {
		if err := deleteNodeObject(l, st.Name); err != nil {
			logf("leaving the Node object %s: %v", st.Name, err)
		}
	}
	for _, p := range []struct {
		name string
		pid  int
	}{{"kubelet", st.KubeletPID}, {"containerd", st.ContainerdPID}} {
		if p.name == "containerd" {
			if err := deleteContainers(l); err != nil {
				errs = append(errs, err)
			}
		}
		if p.pid != 0 && ours(p.pid, l.dir, st.MountNS) {
			if err := stopPID(p.pid, 10*time.Second); err != nil {
				errs = append(errs, fmt.Errorf("stopping %s: %w", p.name, err))
			}
		}
	}
	// The shims, the holder, and any process of the node that is not done yet.
	pids := nodeProcesses(l.dir, st.MountNS)
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	if !waitGone(10*time.Second, pids...) {
		errs = append(errs, fmt.Errorf("the node's processes %v did not exit after SIGKILL", nodeProcesses(l.dir, st.MountNS)))
	}
	if err := removeCgroupRoot(st.CgroupRoot); err != nil {
		errs = append(errs, err)
	}
	// Mounts of the node seen from here: none unless a mount leaked out of the namespace.
	if err := unmountAll(l.dir); err != nil {
		errs = append(errs, err)
	}
	for _, d := range st.CreatedDirs {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("removing the mount point %s the node created: %w", d, err))
		}
	}
	// The bridge exists once a pod off the host network ran; the dummy interface if Up made it.
	for _, link := range []string{st.Bridge, st.DummyLink} {
		if link == "" {
			continue
		}
		if out, err := exec.Command("ip", "link", "del", link).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
			errs = append(errs, fmt.Errorf("removing the network interface %s: %w: %s", link, err, out))
		}
	}
	if len(errs) > 0 {
		// Keep the state (and the logs) for another try.
		return errors.Join(errs...)
	}
	if err := os.RemoveAll(l.dir); err != nil {
		return fmt.Errorf("removing the node's state directory: %w", err)
	}
	logf("node in %s is down", l.dir)
	return nil
}

// deleteContainers kills and deletes every container (pods' and sandboxes') through runc, from
// its state under the node's runc root: it works whether or not containerd and the shims still
// run.
func deleteContainers(l layout) error {
	runc := ""
	if data, err := os.ReadFile(l.containerdConfig()); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "BinaryName = "); ok {
				runc = strings.Trim(v, "'")
			}
		}
	}
	roots, _ := os.ReadDir(l.runcRoot())
	var errs []error
	for _, ns := range roots {
		root := filepath.Join(l.runcRoot(), ns.Name())
		ids, _ := os.ReadDir(root)
		for _, id := range ids {
			if runc == "" {
				errs = append(errs, fmt.Errorf("container %s is left: no runc in %s", id.Name(), l.containerdConfig()))
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			out, err := exec.CommandContext(ctx, runc, "--root", root, "delete", "--force", id.Name()).CombinedOutput()
			cancel()
			if err != nil && !strings.Contains(string(out), "does not exist") {
				errs = append(errs, fmt.Errorf("runc delete --force %s: %w: %s", id.Name(), err, out))
			}
		}
	}
	return errors.Join(errs...)
}
