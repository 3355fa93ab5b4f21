package agentpool

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/agentlease"
)

// Names and paths of the agent pod. The daemon and the agent share the store, the daemon's
// socket and nothing else; the agent reads the store but never writes it.
const (
	AgentContainer  = "agent"
	DaemonContainer = "daemon"

	volStore       = "store"
	volState       = "daemon-state"
	volSocket      = "daemon-socket"
	volTmp         = "tmp"
	volToken       = "publisher-token"
	volDaemonConf  = "daemon-config"
	storeDir       = "/gnu/store"
	stateDir       = "/var/guix"
	socketDir      = "/var/guix/daemon-socket"
	socketPath     = socketDir + "/socket"
	tokenDir       = "/var/run/secrets/guixfarm.io/publisher"
	aclPath        = "/etc/guix/acl"
	nonRootUID     = 65532
	labelArch      = "kubernetes.io/arch"
	labelComponent = "app.kubernetes.io/component"
)

// ConfigKeyACL is the daemon ConfigMap's Guix ACL (/etc/guix/acl): the keys whose substitutes the
// daemon accepts.
const ConfigKeyACL = "acl"

// Selector is the label selecting a pool's pods (and its Leases): the scale subresource's selector.
func Selector(pool string) map[string]string { return map[string]string{agentlease.LabelPool: pool} }

// daemonConfigName is the pool's daemon ConfigMap.
func daemonConfigName(pool string) string { return pool + "-daemon" }

// PodTemplate makes the pool's agent pod from its spec and the farm's defaults. An error names
// the field of the pool to fix; nothing is created from a pool that gives one.
func PodTemplate(pool *farmv1.AgentPool, d Defaults) (corev1.PodTemplateSpec, *field.Error) {
	tplPath := field.NewPath("spec", "template")
	var t corev1.PodTemplateSpec
	if pool.Spec.Template != nil {
		t = *pool.Spec.Template.DeepCopy()
	}
	if v, ok := t.Labels[agentlease.LabelPool]; ok && v != pool.Name {
		return t, field.Invalid(tplPath.Child("metadata", "labels").Key(agentlease.LabelPool), v,
			"the pool's selector label: remove it (the controller sets it to the pool's name)")
	}
	if t.Labels == nil {
		t.Labels = map[string]string{}
	}
	for k, v := range Selector(pool.Name) {
		t.Labels[k] = v
	}
	t.Labels["app.kubernetes.io/name"] = "guix-farm-agent"
	t.Labels["app.kubernetes.io/managed-by"] = "guix-farm"
	t.Labels[labelComponent] = "agent"

	spec := &t.Spec
	sp := tplPath.Child("spec")
	if spec.ServiceAccountName == "" {
		spec.ServiceAccountName = d.ServiceAccount
	}
	if err := place(pool, d, spec, sp); err != nil {
		return t, err
	}
	if err := isolate(pool.Spec.Isolation, spec, sp); err != nil {
		return t, err
	}
	if spec.TerminationGracePeriodSeconds == nil {
		// A pod is deleted only once drained; this bounds the release of builds on a node drain.
		spec.TerminationGracePeriodSeconds = ptr.To[int64](120)
	}

	daemon, err := daemonContainer(pool, d, sp)
	if err != nil {
		return t, err
	}
	agent := agentContainer(pool, d)
	if spec.InitContainers, err = mergeInto(spec.InitContainers, daemon, sp.Child("initContainers")); err != nil {
		return t, err
	}
	if spec.Containers, err = mergeInto(spec.Containers, agent, sp.Child("containers")); err != nil {
		return t, err
	}
	if err := addVolumes(pool, d, spec, sp.Child("volumes")); err != nil {
		return t, err
	}
	return t, nil
}

// place puts the pod on nodes of the architecture its systems build on natively, unless the
// template chose the architecture itself (emulation, or a label of its own).
func place(pool *farmv1.AgentPool, d Defaults, spec *corev1.PodSpec, sp *field.Path) *field.Error {
	if _, ok := spec.NodeSelector[labelArch]; ok {
		return nil
	}
	arch, err := d.archOf(pool.Spec.Systems)
	if err != nil {
		return field.Invalid(field.NewPath("spec", "systems"), pool.Spec.Systems, err.Error())
	}
	if spec.NodeSelector == nil {
		spec.NodeSelector = map[string]string{}
	}
	spec.NodeSelector[labelArch] = arch
	return nil
}

// isolate applies the pool's isolation profile to the pod. There is no third, unisolated profile,
// and a template cannot weaken the one chosen.
func isolate(iso farmv1.Isolation, spec *corev1.PodSpec, sp *field.Path) *field.Error {
	switch iso {
	case "", farmv1.IsolationPrivileged:
		if spec.HostUsers != nil && !*spec.HostUsers {
			return field.Invalid(sp.Child("hostUsers"), false, "a privileged daemon cannot run in a user namespace: set spec.isolation: UserNamespace instead")
		}
	case farmv1.IsolationUserNamespace:
		if spec.HostUsers != nil && *spec.HostUsers {
			return field.Invalid(sp.Child("hostUsers"), true, "spec.isolation UserNamespace runs the pod with hostUsers: false: remove hostUsers from the template")
		}
		spec.HostUsers = ptr.To(false)
	default:
		return field.NotSupported(field.NewPath("spec", "isolation"), iso, []string{string(farmv1.IsolationPrivileged), string(farmv1.IsolationUserNamespace)})
	}
	return nil
}

// daemonSecurity is the daemon's security context under each profile: it makes the build
// sandboxes (mount, PID, network and user namespaces, chroot) and runs builds as other users.
func daemonSecurity(iso farmv1.Isolation) *corev1.SecurityContext {
	if iso == farmv1.IsolationUserNamespace {
		// Inside the pod's user namespace these capabilities reach nothing outside it; the
		// runtime's default seccomp and AppArmor profiles forbid mount and unshare, hence
		// Unconfined, and /proc must be unmasked for the sandboxes to mount their own.
		return &corev1.SecurityContext{
			RunAsUser: ptr.To[int64](0),
			Capabilities: &corev1.Capabilities{Add: []corev1.Capability{
				"SYS_ADMIN", "SYS_CHROOT", "SETUID", "SETGID", "CHOWN", "FOWNER", "DAC_OVERRIDE", "KILL", "NET_ADMIN",
			}},
			SeccompProfile:  &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined},
			AppArmorProfile: &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeUnconfined},
			ProcMount:       ptr.To(corev1.UnmaskedProcMount),
		}
	}
	return &corev1.SecurityContext{Privileged: ptr.To(true), RunAsUser: ptr.To[int64](0)}
}

// daemonContainer is the native sidecar (an init container that keeps running): it starts
// before the agent and stops after it, so the agent never finds its daemon gone mid-build.
func daemonContainer(pool *farmv1.AgentPool, d Defaults, sp *field.Path) (corev1.Container, *field.Error) {
	ds := farmv1.DaemonSpec{}
	if pool.Spec.Daemon != nil {
		ds = *pool.Spec.Daemon
	}
	dp := field.NewPath("spec", "daemon")
	image := firstNonEmpty(ds.Image, d.DaemonImage)
	if image == "" {
		return corev1.Container{}, field.Required(dp.Child("image"), "no daemon image: set spec.daemon.image or the controller's --daemon-image (the chart's agent.daemon.image)")
	}
	slots := max(pool.Spec.MaxParallelBuilds, 1)
	urls := append(nonEmpty(d.BucketURL), d.SubstituteURLs...) // nonEmpty makes a fresh slice
	urls = append(urls, ds.SubstituteURLs...)
	for i, u := range ds.SubstituteURLs {
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return corev1.Container{}, field.Invalid(dp.Child("substituteURLs").Index(i), u, "a substitute URL starts with http:// or https://")
		}
	}
	for i, k := range ds.AuthorizedKeys {
		if !strings.HasPrefix(strings.TrimSpace(k), "(public-key") {
			return corev1.Container{}, field.Invalid(dp.Child("authorizedKeys").Index(i), k, "a Guix public key, as in signing-key.pub: (public-key (ecc (curve Ed25519) (q #...#)))")
		}
	}
	c := corev1.Container{
		Name:          DaemonContainer,
		Image:         image,
		RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways),
		// What a daemon image other than guix-daemon's reads (the test bed's nix-daemon does).
		Env: []corev1.EnvVar{
			{Name: "DAEMON_SOCKET", Value: socketPath},
			{Name: "DAEMON_MAX_JOBS", Value: strconv.Itoa(int(slots))},
			{Name: "DAEMON_SUBSTITUTE_URLS", Value: strings.Join(urls, " ")},
			{Name: "DAEMON_TRUSTED_PUBLIC_KEYS", Value: strings.Join(d.TrustedPublicKeys, " ")},
		},
		SecurityContext: daemonSecurity(pool.Spec.Isolation),
		StartupProbe: &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"test", "-S", socketPath}}},
			PeriodSeconds:    2,
			FailureThreshold: 150,
		},
		VolumeMounts: []corev1.VolumeMount{
			{Name: volStore, MountPath: storeDir},
			{Name: volState, MountPath: stateDir},
			{Name: volSocket, MountPath: socketDir},
			{Name: volDaemonConf, MountPath: aclPath, SubPath: ConfigKeyACL, ReadOnly: true},
		},
	}
	if len(ds.Command) > 0 {
		// Another daemon: it gets its settings from the environment above, and only its own args.
		c.Command = ds.Command
		c.Args = ds.Args
		return c, nil
	}
	c.Command = []string{"guix-daemon"}
	c.Args = []string{"--listen=" + socketPath, "--max-jobs=" + strconv.Itoa(int(slots))}
	if len(urls) > 0 {
		c.Args = append(c.Args, "--substitute-urls="+strings.Join(urls, " "))
	}
	c.Args = append(c.Args, d.DaemonArgs...)
	c.Args = append(c.Args, ds.Args...)
	for i, a := range c.Args {
		if a == "--disable-chroot" {
			return c, field.Invalid(dp.Child("args"), a, fmt.Sprintf("argument %d turns the build sandbox off, and the farm never builds unisolated: remove it (spec.isolation chooses how builds are isolated)", i))
		}
	}
	return c, nil
}

// agentContainer runs the agent, unprivileged: it talks to the daemon over the socket, reads the
// store and publishes through the controller with a pod-bound token.
func agentContainer(pool *farmv1.AgentPool, d Defaults) corev1.Container {
	slots := max(pool.Spec.MaxParallelBuilds, 1)
	args := []string{
		"--pool=" + pool.Name,
		"--systems=" + strings.Join(pool.Spec.Systems, ","),
		"--slots=" + strconv.Itoa(int(slots)),
		"--builder=daemon",
		"--daemon-socket=" + socketPath,
		"--store-path=" + storeDir,
		"--metrics-bind-address=:8080",
	}
	if len(pool.Spec.Features) > 0 {
		args = append(args, "--features="+strings.Join(pool.Spec.Features, ","))
	}
	if d.PublisherURL != "" {
		args = append(args, "--publisher-url="+d.PublisherURL, "--publisher-token-file="+tokenDir+"/token")
	}
	if d.BucketURL != "" {
		args = append(args, "--bucket-url="+d.BucketURL)
	}
	if len(d.TrustedPublicKeys) > 0 {
		args = append(args, "--trusted-public-keys="+strings.Join(d.TrustedPublicKeys, ","))
	}
	extra := append([]string(nil), d.SubstituteURLs...)
	if pool.Spec.Daemon != nil {
		extra = append(extra, pool.Spec.Daemon.SubstituteURLs...)
	}
	if len(extra) > 0 {
		// The agent asks the daemon for these, after the bucket, at every build.
		args = append(args, "--substitute-urls="+strings.Join(extra, ","))
	}
	args = append(args, d.AgentArgs...)
	mounts := []corev1.VolumeMount{
		{Name: volStore, MountPath: storeDir, ReadOnly: true},
		{Name: volSocket, MountPath: socketDir},
		// Logs, and nars waiting for their upload, are spooled here: the root is read-only.
		{Name: volTmp, MountPath: "/tmp"},
	}
	if d.PublisherURL != "" {
		mounts = append(mounts, corev1.VolumeMount{Name: volToken, MountPath: tokenDir, ReadOnly: true})
	}
	return corev1.Container{
		Name:  AgentContainer,
		Image: d.AgentImage,
		Args:  args,
		Env: []corev1.EnvVar{
			{Name: "AGENT_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
			{Name: "AGENT_POOL", Value: pool.Name},
		},
		Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 8080}},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr.To(true),
			RunAsUser:                ptr.To[int64](nonRootUID),
			RunAsGroup:               ptr.To[int64](nonRootUID),
			AllowPrivilegeEscalation: ptr.To(false),
			ReadOnlyRootFilesystem:   ptr.To(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		VolumeMounts: mounts,
	}
}

// mergeInto merges ours into the template's container of the same name (the template adds
// resources, env, mounts, args and may replace image and pull policy; the daemon's security is the
// isolation profile's), or appends it.
func mergeInto(list []corev1.Container, ours corev1.Container, lp *field.Path) ([]corev1.Container, *field.Error) {
	for i := range list {
		u := &list[i]
		if u.Name != ours.Name {
			continue
		}
		p := lp.Index(i)
		if u.SecurityContext != nil && ours.Name == DaemonContainer {
			return nil, field.Forbidden(p.Child("securityContext"), "the daemon's privileges come from spec.isolation (Privileged or UserNamespace): remove securityContext")
		}
		if u.RestartPolicy != nil && ours.RestartPolicy != nil && *u.RestartPolicy != *ours.RestartPolicy {
			return nil, field.Forbidden(p.Child("restartPolicy"), "the daemon is a sidecar (restartPolicy Always): remove restartPolicy")
		}
		m := ours
		m.Image = firstNonEmpty(u.Image, ours.Image)
		m.ImagePullPolicy = u.ImagePullPolicy
		m.Resources = u.Resources
		if len(u.Command) > 0 {
			m.Command = u.Command
		}
		m.Args = append(m.Args, u.Args...)
		// Later entries win for a repeated name: the template's env overrides ours.
		m.Env = append(m.Env, u.Env...)
		m.EnvFrom = u.EnvFrom
		m.VolumeMounts = append(m.VolumeMounts, u.VolumeMounts...)
		m.Ports = append(m.Ports, u.Ports...)
		if u.SecurityContext != nil {
			m.SecurityContext = u.SecurityContext
		}
		if u.LivenessProbe != nil {
			m.LivenessProbe = u.LivenessProbe
		}
		if u.ReadinessProbe != nil {
			m.ReadinessProbe = u.ReadinessProbe
		}
		if u.StartupProbe != nil {
			m.StartupProbe = u.StartupProbe
		}
		list[i] = m
		return list, nil
	}
	if ours.Name == DaemonContainer {
		// The daemon starts after the template's own init containers, before the agent.
		return append(list, ours), nil
	}
	return append([]corev1.Container{ours}, list...), nil
}

// addVolumes adds the pod's shared volumes; the template's own volumes must not take their names.
func addVolumes(pool *farmv1.AgentPool, d Defaults, spec *corev1.PodSpec, vp *field.Path) *field.Error {
	ours := []corev1.Volume{
		{Name: volState, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		// The socket lives in memory: a stale one on disk would outlive its daemon.
		{Name: volSocket, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
		{Name: volTmp, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: volDaemonConf, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: daemonConfigName(pool.Name)}}}},
	}
	if d.StoreSize == "" {
		ours = append(ours, corev1.Volume{Name: volStore, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
	} // else: the StatefulSet's volumeClaimTemplate named volStore.
	if d.PublisherURL != "" {
		ours = append(ours, corev1.Volume{Name: volToken, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: d.TokenAudience, ExpirationSeconds: ptr.To[int64](3600), Path: "token"}}},
		}}})
	}
	for i, v := range spec.Volumes {
		for _, o := range ours {
			if v.Name == o.Name {
				return field.Duplicate(vp.Index(i).Child("name"), v.Name)
			}
		}
		if v.Name == volStore {
			return field.Duplicate(vp.Index(i).Child("name"), v.Name)
		}
	}
	spec.Volumes = append(spec.Volumes, ours...)
	return nil
}

// guixACL is the daemon's /etc/guix/acl authorizing keys (Guix public keys) for substitutes.
func guixACL(keys []string) string {
	var b strings.Builder
	b.WriteString("(acl")
	for _, k := range keys {
		b.WriteString("\n (entry\n  ")
		b.WriteString(strings.TrimSpace(k))
		b.WriteString("\n  (tag\n   (guix import)))")
	}
	b.WriteString(")\n")
	return b.String()
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}
