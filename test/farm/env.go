package farm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/controllers"
	"github.com/guixfarm/guix-farm/controllers/agentpool"
	"github.com/guixfarm/guix-farm/controllers/builds"
	"github.com/guixfarm/guix-farm/internal/availability"
	"github.com/guixfarm/guix-farm/internal/drvsource"
	"github.com/guixfarm/guix-farm/internal/metrics"
	"github.com/guixfarm/guix-farm/internal/planner"
	"github.com/guixfarm/guix-farm/internal/publishing"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// Root is the repository root.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Env is a real kube-apiserver + etcd (envtest) with the farm's CRDs installed.
type Env struct {
	Env    *envtest.Environment
	Config *rest.Config
	Client client.Client
	Scheme *k8sruntime.Scheme

	// certDir is the apiserver's certificate directory, owned by Env (not envtest) so that
	// the apiserver can be stopped and started again with the same certificates (faults.go).
	certDir string
	apiMu   sync.Mutex
	apiDown bool
}

// Scheme has the client-go types and the farm's.
func Scheme() *k8sruntime.Scheme {
	s := k8sruntime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = farmv1.AddToScheme(s)
	return s
}

// StartEnv starts the apiserver for a package's tests (call from TestMain). It returns nil with a
// reason when the binaries are absent and the test bed is not required.
func StartEnv() (*Env, string, error) { return StartEnvWith(EnvOptions{}) }

// EnvOptions vary the apiserver StartEnvWith starts.
type EnvOptions struct {
	// ServiceAccountAdmission turns the ServiceAccount admission plugin back on (envtest turns it
	// off): a pod gets its ServiceAccount's token volume, as in a cluster, which a real kubelet
	// (test/node) mounts for in-cluster clients; a pod whose ServiceAccount is missing is refused.
	ServiceAccountAdmission bool
}

// StartEnvWith is StartEnv with options.
func StartEnvWith(o EnvOptions) (*Env, string, error) {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = testbed.ToolsBin()
	}
	for _, b := range []string{"kube-apiserver", "etcd", "kubectl"} {
		if _, err := os.Stat(filepath.Join(assets, b)); err != nil {
			msg := fmt.Sprintf("%s not in %s: run hack/tools.sh kube etcd (or make test)", b, assets)
			if testbed.Required() {
				return nil, "", fmt.Errorf("%s", msg)
			}
			return nil, msg, nil
		}
	}
	// A certificate directory of our own: envtest removes one it made itself when the apiserver
	// stops, and a restart would then serve under a new CA no existing client trusts.
	certDir, err := os.MkdirTemp("", "guixfarm-apiserver-")
	if err != nil {
		return nil, "", err
	}
	e := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(Root(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	e.ControlPlane.APIServer = &envtest.APIServer{CertDir: certDir}
	// A kubelet (test/node) gives its node name as an address too, and the apiserver would try
	// that first for logs and exec: nothing resolves it here. The node's InternalIP is real.
	e.ControlPlane.APIServer.Configure().Set("kubelet-preferred-address-types", "InternalIP")
	if o.ServiceAccountAdmission {
		e.ControlPlane.APIServer.Configure().Disable("disable-admission-plugins")
	}
	if err := apiserverArgs(e.ControlPlane.APIServer, os.Getenv("GUIXFARM_APISERVER_ARGS")); err != nil {
		os.RemoveAll(certDir)
		return nil, "", err
	}
	cfg, err := e.Start()
	if err != nil {
		os.RemoveAll(certDir)
		return nil, "", fmt.Errorf("starting envtest: %w", err)
	}
	cfg.QPS, cfg.Burst = 500, 1000
	s := Scheme()
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		_ = e.Stop()
		os.RemoveAll(certDir)
		return nil, "", err
	}
	return &Env{Env: e, Config: cfg, Client: c, Scheme: s, certDir: certDir}, "", nil
}

// apiserverArgs adds flags to the test apiserver from GUIXFARM_APISERVER_ARGS (space-separated
// --flag=value, e.g. "--watch-cache=false"): docs/scale.md measures the apiserver's levers on the
// same benchmarks without a second code path. Unset, the apiserver runs as before.
func apiserverArgs(s *envtest.APIServer, flags string) error {
	for _, f := range strings.Fields(flags) {
		key, val, ok := strings.Cut(strings.TrimPrefix(f, "--"), "=")
		if !ok || key == "" || !strings.HasPrefix(f, "--") {
			return fmt.Errorf("GUIXFARM_APISERVER_ARGS: %q is not --flag=value", f)
		}
		s.Configure().Set(key, val)
	}
	return nil
}

// Stop stops the apiserver and etcd and removes what they kept on disk (call from TestMain).
func (e *Env) Stop() error {
	err := e.Env.Stop()
	if e.certDir != "" {
		os.RemoveAll(e.certDir)
	}
	return err
}

// Namespace creates a fresh namespace for one test.
func (e *Env) Namespace(t testing.TB, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	if err := e.Client.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	return ns.Name
}

// ControllerOptions tune StartController.
type ControllerOptions struct {
	Strategy planner.Strategy
	BuildTTL time.Duration
	Log      logr.Logger
	// Facts replaces the drv directory as the derivation source; Bucket is what the
	// availability owner asks (a bucket.Reader).
	Facts  builds.FactsSource
	Bucket availability.Store
	// Metrics, when set, receives the controller's metrics (a test reads them back).
	Metrics *metrics.Metrics
	// ManagerErrorsOK: a manager returning an error (e.g. started while the apiserver is down) is
	// recorded (Controller.Errs), not reported as an error of the test.
	ManagerErrorsOK bool
	// Publisher, when set, is the publisher service the controller serves at PublisherAddr.
	Publisher     *publishing.Options
	PublisherAddr string
	// AgentPods, with an AgentImage, makes the controller run pools as StatefulSets.
	AgentPods agentpool.Defaults
	// WriteQueueStatus is controllers.Options.WriteQueueStatus (docs/scale.md).
	WriteQueueStatus bool
}

// StartController runs the farm's controllers in-process, watching namespace, reading .drv files
// from drvDir. It stops when the test ends.
func (e *Env) StartController(t testing.TB, namespace, drvDir string, o ControllerOptions) *controllers.Farm {
	t.Helper()
	return e.RunController(t, namespace, drvDir, o).Farm()
}

// Controller is an in-process controller that a test can stop and start again, as a crash and a
// restart of the controller's process would: each start is a new manager with empty caches, a new
// planner and a new availability owner (o.Facts, o.Bucket and o.Metrics, when set, are reused).
type Controller struct {
	t                 testing.TB
	env               *Env
	namespace, drvDir string
	o                 ControllerOptions

	mu     sync.Mutex
	farm   *controllers.Farm
	cancel context.CancelFunc
	done   chan struct{}
	// errs are what the managers returned; a manager that fails is an error of the test unless
	// o.ManagerErrorsOK.
	errs []error
}

// RunController starts the controllers in-process like StartController and returns a handle that
// can stop and start them; they stop when the test ends.
func (e *Env) RunController(t testing.TB, namespace, drvDir string, o ControllerOptions) *Controller {
	t.Helper()
	c := &Controller{t: t, env: e, namespace: namespace, drvDir: drvDir, o: o}
	c.Start()
	t.Cleanup(c.Stop)
	return c
}

// Farm is the running controller's wiring (nil while stopped).
func (c *Controller) Farm() *controllers.Farm {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.farm
}

// Running says whether the controller runs.
func (c *Controller) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cancel != nil
}

// Errs are the errors the managers returned so far.
func (c *Controller) Errs() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.errs...)
}

// Start starts the controller (a new manager); it does nothing if it runs.
func (c *Controller) Start() {
	t := c.t
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancel != nil {
		return
	}
	e, o := c.env, c.o
	log := o.Log
	if log.GetSink() == nil {
		log = testr.NewWithInterface(t, testr.Options{Verbosity: 0})
	}
	mgr, err := ctrl.NewManager(e.Config, ctrl.Options{
		Scheme:                 e.Scheme,
		Logger:                 log,
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{c.namespace: {}}, DefaultTransform: cache.TransformStripManagedFields()},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             ctrlConfigUnique(),
	})
	if err != nil {
		t.Fatalf("creating manager: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	facts := o.Facts
	if facts == nil {
		facts = drvsource.NewFactsCache(drvsource.NewDir(c.drvDir, ""), 10000)
	}
	m := o.Metrics
	if m == nil {
		m = metrics.New(nil)
	}
	farm, err := controllers.Setup(ctx, mgr, controllers.Options{
		Strategy: o.Strategy, Facts: facts, Bucket: o.Bucket,
		BuildTTL: o.BuildTTL, PlanDebounce: 10 * time.Millisecond, BuildWorkers: 16, AgentGrace: 500 * time.Millisecond,
		Clock: clock.RealClock{}, Metrics: m, Log: log, Publisher: o.Publisher, PublisherAddr: o.PublisherAddr,
		AgentPods: o.AgentPods, WriteQueueStatus: o.WriteQueueStatus,
	})
	if err != nil {
		cancel()
		t.Fatalf("setting up controllers: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			c.mu.Lock()
			c.errs = append(c.errs, err)
			c.mu.Unlock()
			if !o.ManagerErrorsOK {
				t.Errorf("manager: %v", err)
			}
		}
	}()
	c.farm, c.cancel, c.done = farm, cancel, done
}

// Stop stops the controller and waits until its manager has returned; it does nothing if it is
// stopped.
func (c *Controller) Stop() {
	c.mu.Lock()
	cancel, done := c.cancel, c.done
	c.cancel, c.done, c.farm = nil, nil, nil
	c.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
}

// Restart stops the controller, waits for pause, and starts it again.
func (c *Controller) Restart(pause time.Duration) {
	c.Stop()
	time.Sleep(pause)
	c.Start()
}

// Kubeconfig writes a kubeconfig for the envtest apiserver (for agent processes and kubectl).
func (e *Env) Kubeconfig(t testing.TB) string {
	t.Helper()
	user, err := e.Env.ControlPlane.AddUser(envtest.User{Name: "farm-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatalf("adding user: %v", err)
	}
	data, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Kubectl runs the pinned kubectl against the envtest apiserver.
func (e *Env) Kubectl(t testing.TB, kubeconfig string, stdin string, args ...string) (string, error) {
	t.Helper()
	bin := filepath.Join(e.Env.BinaryAssetsDirectory, "kubectl")
	cmd := exec.Command(bin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	if stdin != "" {
		cmd.Stdin = stringsReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}
