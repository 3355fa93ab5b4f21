package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/guixfarm/guix-farm/internal/bucket"
	"github.com/guixfarm/guix-farm/internal/cli"
	"github.com/guixfarm/guix-farm/internal/publishing"
	"github.com/guixfarm/guix-farm/internal/signing"
)

// publisherFlags configure the publisher service the controller serves (docs/security.md): the
// only holder of the bucket's write credentials and the narinfo signing keys; agents upload
// through presigned URLs it hands out for the attempts they hold.
type publisherFlags struct {
	addr, keyFiles, keyDir     string
	compression, trusted       string
	audiences, serviceAccounts string
	expiry                     time.Duration
	reread                     bool
	parallel                   int
}

func (p *publisherFlags) bind(fs *flag.FlagSet) {
	fs.StringVar(&p.addr, "publisher-bind-address", "", "serve the publisher service here (e.g. :8082); needs the bucket (write credentials from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY) and --signing-keys; empty: off")
	fs.StringVar(&p.keyFiles, "signing-keys", "", "comma-separated narinfo signing key files (Guix signing-key.sec, Nix secret key, as `guix-farm-controller keygen` writes them), for the publisher service")
	fs.StringVar(&p.keyDir, "signing-keys-dir", "", "a directory holding the signing keys as the entries of the farm's signing Secret (a mounted Secret: nix-secret-key, guix-signing-key.sec, signing-host; docs/signing.md), instead of --signing-keys")
	fs.StringVar(&p.trusted, "trusted-public-keys", "", "comma-separated Nix public keys (name:base64) whose signatures make a narinfo read from the bucket trusted, besides those of the signing keys (e.g. the previous key during a rotation); an output or .drv whose narinfo none of them signed counts as absent")
	fs.StringVar(&p.compression, "compression", "zstd", "compression of the nars agents upload through the publisher service: zstd, gzip, lzip, xz or none")
	fs.DurationVar(&p.expiry, "publisher-url-expiry", publishing.DefaultExpiry, "lifetime of the presigned upload URLs the publisher hands out")
	fs.BoolVar(&p.reread, "publisher-reread", true, "read every uploaded nar back and check its NarHash and NarSize before its narinfo is written (false: only that the object exists with the uploaded size)")
	fs.IntVar(&p.parallel, "publisher-parallel", bucket.DefaultClosureParallelism, "items a commit verifies at once (small ones: 4 times as many)")
	fs.StringVar(&p.audiences, "publisher-token-audience", "", "comma-separated audiences the agents' tokens must be meant for (the chart projects a token for guix-farm-publisher); empty: the apiserver's")
	fs.StringVar(&p.serviceAccounts, "publisher-agent-service-accounts", "", "comma-separated ServiceAccount names agents run as; empty: any ServiceAccount whose token is bound to a pod")
}

// check refuses a publisher without what it needs, at start.
func (p *publisherFlags) check(bcfg bucket.Config) error {
	if p.addr == "" {
		return nil
	}
	if bcfg.Bucket == "" {
		return errors.New("--publisher-bind-address needs the bucket: give --bucket-endpoint and --bucket")
	}
	if (p.keyFiles == "") == (p.keyDir == "") {
		return errors.New("--publisher-bind-address needs --signing-keys or --signing-keys-dir (one of them): the publisher signs the narinfos")
	}
	return nil
}

// trustedKeys are the Nix public keys narinfos read from the bucket must be signed by: those of
// --trusted-public-keys and of the signing keys (--signing-keys, --signing-keys-dir). None: reads
// are not verified.
func (p *publisherFlags) trustedKeys() ([]signing.NixPublicKey, error) {
	var out []signing.NixPublicKey
	for _, k := range cli.SplitList(p.trusted) {
		pk, err := signing.ParseNixPublicKey(k)
		if err != nil {
			return nil, fmt.Errorf("--trusted-public-keys: %w", err)
		}
		out = append(out, pk)
	}
	keys, err := p.keys()
	if err != nil {
		return nil, err
	}
	if files := cli.SplitList(p.keyFiles); len(files) > 0 {
		if keys, err = signing.LoadKeysFromFiles(files...); err != nil {
			return nil, fmt.Errorf("--signing-keys: %w", err)
		}
	}
	for _, k := range keys.Nix {
		out = append(out, k.Public())
	}
	return out, nil
}

// keys loads the signing keys from --signing-keys-dir (a mounted Secret), if given.
func (p *publisherFlags) keys() (signing.Keys, error) {
	if p.keyDir == "" {
		return signing.Keys{}, nil
	}
	ents, err := os.ReadDir(p.keyDir)
	if err != nil {
		return signing.Keys{}, fmt.Errorf("--signing-keys-dir: %w", err)
	}
	data := map[string][]byte{}
	for _, e := range ents {
		// A mounted Secret's entries are symbolic links into its ..data directory.
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(p.keyDir, e.Name()))
		if err != nil {
			if errors.Is(err, syscall.EISDIR) {
				continue
			}
			return signing.Keys{}, fmt.Errorf("--signing-keys-dir: %w", err)
		}
		data[e.Name()] = b
	}
	k, err := signing.KeysFromSecretData(data)
	if err != nil {
		return signing.Keys{}, fmt.Errorf("--signing-keys-dir %s: %w", p.keyDir, err)
	}
	return k, nil
}

// options are the publisher service's (controllers.Setup fills in what comes from the manager),
// with its TokenReviews made by c.
func (p *publisherFlags) options(c client.Client, bcfg bucket.Config, log logr.Logger) (*publishing.Options, error) {
	var err error
	bcfg.AllowUnsigned = false
	bcfg.KeyFiles = cli.SplitList(p.keyFiles)
	if bcfg.Keys, err = p.keys(); err != nil {
		return nil, err
	}
	bcfg.Compression = p.compression
	bcfg.Log = log.WithName("bucket")
	pub, err := bucket.NewPublisher(bcfg)
	if err != nil {
		return nil, fmt.Errorf("publisher (--bucket-endpoint, --bucket, --signing-keys, --compression): %w", err)
	}
	return &publishing.Options{
		Publisher: pub,
		Auth: &publishing.TokenReviewer{Client: c, Audiences: cli.SplitList(p.audiences),
			ServiceAccounts: cli.SplitList(p.serviceAccounts)},
		Expiry: p.expiry, Reread: p.reread, Parallel: p.parallel, Log: log,
	}, nil
}
