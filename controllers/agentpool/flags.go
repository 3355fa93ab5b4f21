package agentpool

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/guixfarm/guix-farm/internal/cli"
)

// Flags are the controller's flags for the farm-wide settings of the pods it makes for AgentPools
// (docs/agentpools.md); without --agent-image it makes none. The chart's tests read the rendered
// controller's flags through them, as the controller does.
type Flags struct {
	d                                             Defaults
	agentArgs, trusted, daemonArgs, urls, keyFile string
	systemArch                                    string
}

// Bind registers the flags on fs.
func (f *Flags) Bind(fs *flag.FlagSet) {
	fs.StringVar(&f.d.AgentImage, "agent-image", "", "image of the agents the controller runs for AgentPools (a StatefulSet per pool); empty: no pods are made and pools report on agents started elsewhere")
	fs.StringVar(&f.agentArgs, "agent-args", "", "comma-separated arguments added to every agent's (e.g. --lease-duration=1m)")
	fs.StringVar(&f.d.ServiceAccount, "agent-service-account", "", "ServiceAccount of the agent pods (the chart's least-privilege agent account)")
	fs.StringVar(&f.d.PublisherURL, "agent-publisher-url", "", "the publisher service URL agents publish through (e.g. http://guix-farm-publisher.guix-farm.svc:8082)")
	fs.StringVar(&f.d.TokenAudience, "agent-token-audience", "guix-farm-publisher", "audience of the pod-bound token projected into agent pods for the publisher service")
	fs.StringVar(&f.d.BucketURL, "agent-bucket-url", "", "the bucket's public substitute URL, the agents' daemons' first substitute server")
	fs.StringVar(&f.trusted, "agent-trusted-public-keys", "", "comma-separated Nix public keys (name:base64) agents tell a nix-daemon to trust (the farm's own)")
	fs.StringVar(&f.d.DaemonImage, "daemon-image", "", "image of the daemon sidecar (a guix-daemon image; docs/images.md); an AgentPool's spec.daemon.image overrides it")
	fs.StringVar(&f.daemonArgs, "daemon-args", "", "comma-separated arguments added to guix-daemon's")
	fs.StringVar(&f.urls, "daemon-substitute-urls", "", "comma-separated substitute URLs the daemons use after the farm's bucket (e.g. https://bordeaux.guix.gnu.org)")
	fs.StringVar(&f.keyFile, "daemon-authorized-keys", "", "comma-separated files each holding a Guix public key (signing-key.pub) the daemons accept substitutes signed by: the farm's first")
	fs.StringVar(&f.systemArch, "system-arch", "", "comma-separated system=arch entries over the default map of Guix systems to kubernetes.io/arch (x86_64-linux=amd64, i686-linux=amd64, aarch64-linux=arm64, ...)")
	fs.StringVar(&f.d.StoreSize, "agent-store-size", "", "give each agent a PersistentVolumeClaim of this size for its store (e.g. 200Gi), kept across scale-downs; empty: an emptyDir")
	fs.StringVar(&f.d.StoreClass, "agent-store-class", "", "storage class of the agents' store claims (empty: the cluster's default)")
}

// Defaults reads the files and lists the flags name.
func (f *Flags) Defaults() (Defaults, error) {
	d := f.d
	d.AgentArgs = cli.SplitList(f.agentArgs)
	d.TrustedPublicKeys = cli.SplitList(f.trusted)
	d.DaemonArgs = cli.SplitList(f.daemonArgs)
	d.SubstituteURLs = cli.SplitList(f.urls)
	for _, file := range cli.SplitList(f.keyFile) {
		b, err := os.ReadFile(file)
		if err != nil {
			return d, fmt.Errorf("--daemon-authorized-keys: %w", err)
		}
		if k := strings.TrimSpace(string(b)); !strings.HasPrefix(k, "(public-key") {
			return d, fmt.Errorf("--daemon-authorized-keys: %s is not a Guix public key (want the contents of a signing-key.pub, starting with (public-key)", file)
		} else {
			d.AuthorizedKeys = append(d.AuthorizedKeys, k)
		}
	}
	var err error
	if d.SystemArch, err = ParseSystemArch(f.systemArch); err != nil {
		return d, err
	}
	return d, nil
}
