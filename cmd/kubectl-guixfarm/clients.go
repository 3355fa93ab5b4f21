package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// kube returns a client of the farm's apiserver and the namespace to work in, from the
// kubeconfig as kubectl loads it: --kubeconfig, else $KUBECONFIG, else ~/.kube/config.
func (g *common) kube() (client.Client, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = g.kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: g.context})
	rc, err := cc.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("loading the kubeconfig (--kubeconfig, $KUBECONFIG or ~/.kube/config; --context picks a context): %w", err)
	}
	// client-go's default of 5 requests a second would make a large --all-missing crawl.
	rc.QPS, rc.Burst = 50, 100
	ns := g.namespace
	if ns == "" {
		if ns, _, err = cc.Namespace(); err != nil {
			return nil, "", fmt.Errorf("the kubeconfig context's namespace (give -n/--namespace): %w", err)
		}
	}
	scheme := runtime.NewScheme()
	if err := farmv1.AddToScheme(scheme); err != nil {
		return nil, "", err
	}
	cl, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		return nil, "", fmt.Errorf("connecting to the apiserver at %s: %w", rc.Host, err)
	}
	return cl, ns, nil
}

// bucketConfig is the bucket's configuration from the flags and the environment; write says
// whether the command writes (and so needs credentials).
func (g *common) bucketConfig(e env, write bool) (bucket.Config, error) {
	if err := storepath.Dir(g.storeDir).Validate(); err != nil {
		return bucket.Config{}, fmt.Errorf("--store-dir: %w", err)
	}
	var missing []string
	if g.bucketEndpoint == "" {
		missing = append(missing, "--bucket-endpoint is not set: give the farm's S3 endpoint, e.g. --bucket-endpoint http://minio.guix-farm:9000 (or export GUIXFARM_BUCKET_ENDPOINT)")
	}
	if g.bucket == "" {
		missing = append(missing, "--bucket is not set: give the farm's bucket, the controller's --bucket (or export GUIXFARM_BUCKET)")
	}
	cfg := bucket.Config{
		Endpoint: g.bucketEndpoint, Bucket: g.bucket, StoreDir: g.storeDir,
		AccessKey: e.Getenv("AWS_ACCESS_KEY_ID"), SecretKey: e.Getenv("AWS_SECRET_ACCESS_KEY"),
		Log: logr.Discard(),
	}
	if write && (cfg.AccessKey == "" || cfg.SecretKey == "") {
		missing = append(missing, "$AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY are not both set: submit uploads the .drv closures, so export the bucket's write credentials")
	}
	if len(missing) > 0 {
		return cfg, errors.New(strings.Join(missing, "; "))
	}
	return cfg, nil
}
