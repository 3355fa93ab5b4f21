package node

import (
	"bytes"
	"fmt"
	"path/filepath"
	"text/template"
)

// PauseImage is the sandbox image: the one containerd 2.4.2 pins by default
// (internal/cri/config.DefaultSandboxImage), set in the config anyway so that the image this
// package imports and the one containerd runs cannot drift apart.
const PauseImage = "registry.k8s.io/pause:3.10.2"

// layout is where a node keeps its files under the state directory.
type layout struct {
	dir string
}

func (l layout) path(elem ...string) string {
	return filepath.Join(append([]string{l.dir}, elem...)...)
}

func (l layout) stateFile() string        { return l.path("state.json") }
func (l layout) logDir() string           { return l.path("logs") }
func (l layout) containerdConfig() string { return l.path("containerd", "config.toml") }
func (l layout) containerdSocket() string { return l.path("containerd", "containerd.sock") }
func (l layout) runcRoot() string         { return l.path("runc") }
func (l layout) kubeletConfig() string    { return l.path("kubelet-config.yaml") }
func (l layout) kubeconfig() string       { return l.path("kubeconfig") }
func (l layout) kubeletRoot() string      { return l.path("kubelet") }
func (l layout) podLogs() string          { return l.path("pod-logs") }
func (l layout) imagesDir() string        { return l.path("images") }

// shimSocketDir holds the shims' sockets: a socket's path is this directory, "/" and 64 hex
// digits, and must fit in sun_path, so containerd refuses a directory longer than 42 bytes.
func (l layout) shimSocketDir() string { return l.path("s") }

const maxShimSocketDir = 42

// containerdTOML is containerd's whole configuration: no imports (the host's /etc/containerd is
// not read), and every directory it would otherwise make under /run, /var/lib, /opt or /etc is
// under the state directory.
var containerdTOML = template.Must(template.New("containerd").Parse(`version = 4
root = '{{.Dir}}/containerd/root'
state = '{{.Dir}}/containerd/state'
temp = '{{.Dir}}/containerd/tmp'
imports = []

[plugins]
  [plugins.'io.containerd.server.v1.grpc']
    address = '{{.Socket}}'
  [plugins.'io.containerd.server.v1.ttrpc']
    address = '{{.Socket}}.ttrpc'
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = '{{.ShimSockets}}'
  [plugins.'io.containerd.internal.v1.opt']
    path = '{{.Dir}}/containerd/opt'
  # NRI would listen on /var/run/nri/nri.sock; nothing here plugs into it.
  [plugins.'io.containerd.nri.v1.nri']
    disable = true

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{{.Pause}}'

  [plugins.'io.containerd.cri.v1.runtime']
    # The test bed lacks CAP_SYS_RESOURCE: runc cannot set a container's oom_score_adj below its
    # own, and fails every container unless containerd keeps the score at least the shim's.
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    cdi_spec_dirs = []
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = '{{.Runc}}'
      Root = '{{.RuncRoot}}'
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['{{.CNIBin}}']
      conf_dir = '{{.Dir}}/cni/net.d'

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
`))

// kubeletYAML is the kubelet's configuration for this machine (testbed.md section 7): cgroup v1
// (deprecated, refused unless failCgroupV1 is false), cgroupfs without per-QoS cgroups or
// allocatable enforcement (the pods' cgroups all go under CgroupRoot, which Down removes), no
// image garbage collection (the images come from archives and could not be pulled again) and
// eviction only when the machine is nearly full (the disk is shared with the other tests).
var kubeletYAML = template.Must(template.New("kubelet").Parse(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
cgroupRoot: {{.CgroupRoot}}
enforceNodeAllocatable: []
failSwapOn: false
containerRuntimeEndpoint: unix://{{.Socket}}
imageServiceEndpoint: unix://{{.Socket}}
address: {{.NodeIP}}
port: {{.Port}}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {{.HealthzPort}}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
podLogsDir: {{.PodLogs}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  imagefs.available: 1%
resolvConf: /etc/resolv.conf
`))

// cniConflist is the pod network: pods that are not on the host network get an address on a
// bridge of their own, with no gateway and no masquerading (the test bed has no iptables, and a
// gateway would need IP forwarding switched on host-wide), so they reach each other only. The
// farm's pods use the host network, where the test bed's loopback servers are. What the network
// is for is readiness: containerd reports it ready, and so the kubelet the node (and the node
// lifecycle controller lifts its not-ready taint), only once a configuration loads.
var cniConflist = template.Must(template.New("cni").Parse(`{
  "cniVersion": "1.0.0",
  "name": "guixfarm-node",
  "plugins": [{
    "type": "bridge",
    "bridge": "{{.Bridge}}",
    "isGateway": false,
    "ipMasq": false,
    "ipam": {
      "type": "host-local",
      "ranges": [[{"subnet": "{{.PodSubnet}}"}]],
      "dataDir": "{{.Dir}}/cni/ipam"
    }
  }]
}
`))

// bridgeLink is the pod network's bridge, on the host (Down deletes it); podSubnet its addresses.
const (
	bridgeLink = "gfnode-br0"
	podSubnet  = "10.254.0.0/24"
)

type configData struct {
	CNIBin, Bridge, PodSubnet                       string
	Dir, Socket, ShimSockets, Pause, Runc, RuncRoot string
	CgroupRoot, NodeIP, PodLogs                     string
	Port, HealthzPort                               int
}

func render(t *template.Template, d configData) ([]byte, error) {
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		return nil, fmt.Errorf("rendering the %s configuration: %w", t.Name(), err)
	}
	return b.Bytes(), nil
}
