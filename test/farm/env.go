package farm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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
	"github.com/guixfarm/guix-farm/controllers/builds"
	"github.com/guixfarm/guix-farm/internal/availability"
	"github.com/guixfarm/guix-farm/internal/drvsource"
	"github.com/guixfarm/guix-farm/internal/metrics"
	"github.com/guixfarm/guix-farm/internal/planner"
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
func StartEnv() (*Env, string, error) {
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
	e := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(Root(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	cfg, err := e.Start()
	if err != nil {
		return nil, "", fmt.Errorf("starting envtest: %w", err)
	}
	cfg.QPS, cfg.Burst = 500, 1000
	s := Scheme()
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		_ = e.Stop()
		return nil, "", err
	}
	return &Env{Env: e, Config: cfg, Client: c, Scheme: s}, "", nil
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
}

// StartController runs the farm's controllers in-process, watching namespace, reading .drv files
// from drvDir. It stops when the test ends.
func (e *Env) StartController(t testing.TB, namespace, drvDir string, o ControllerOptions) *controllers.Farm {
	t.Helper()
	log := o.Log
	if log.GetSink() == nil {
		log = testr.NewWithInterface(t, testr.Options{Verbosity: 0})
	}
	mgr, err := ctrl.NewManager(e.Config, ctrl.Options{
		Scheme:                 e.Scheme,
		Logger:                 log,
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{namespace: {}}, DefaultTransform: cache.TransformStripManagedFields()},
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
		facts = drvsource.NewFactsCache(drvsource.NewDir(drvDir, ""), 10000)
	}
	m := o.Metrics
	if m == nil {
		m = metrics.New(nil)
	}
	farm, err := controllers.Setup(ctx, mgr, controllers.Options{
		Strategy: o.Strategy, Facts: facts, Bucket: o.Bucket,
		BuildTTL: o.BuildTTL, PlanDebounce: 10 * time.Millisecond, BuildWorkers: 16, AgentGrace: 500 * time.Millisecond,
		Clock: clock.RealClock{}, Metrics: m, Log: log,
	})
	if err != nil {
		cancel()
		t.Fatalf("setting up controllers: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("manager: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return farm
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
