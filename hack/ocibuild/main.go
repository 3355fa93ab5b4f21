// Command ocibuild builds guix-farm's container images without a container engine: the controller
// and the agent (static, non-root, for linux/amd64 and linux/arm64) and the test daemon sidecar
// (the build host's nix-daemon, for its own architecture). Each is written as an OCI image layout
// directory <out>/<name>/ and as an oci-archive <out>/<name>.tar for `ctr -n k8s.io images import`.
// The same commit gives the same digests: see docs/images.md.
//
// Usage, from the repository's root (`make images`):
//
//	go run ./hack/ocibuild [-out bin/images] [-controller REF] [-agent REF] [-test-daemon REF]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

type options struct {
	dir, out   string
	arches     []string
	sourceURL  string
	controller string // image references; an empty one is not built
	agent      string
	testDaemon string
}

// goImage is an image that holds one of the module's commands and nothing else of ours.
type goImage struct {
	ref name.Tag
	pkg string
}

// builder holds what every image of one run shares.
type builder struct {
	dir, out string
	tmp      string // the binaries
	arches   []string
	src      source
	labels   map[string]string
	base     namedLayer
}

func main() {
	var o options
	var arches string
	flag.StringVar(&o.dir, "C", ".", "the repository's root")
	flag.StringVar(&o.out, "out", "bin/images", "output directory (relative to -C)")
	flag.StringVar(&arches, "arches", "amd64,arm64", "comma-separated architectures of the controller and agent images (linux)")
	flag.StringVar(&o.sourceURL, "source", "https://github.com/guixfarm/guix-farm", "the org.opencontainers.image.source label")
	flag.StringVar(&o.controller, "controller", "ghcr.io/guixfarm/guix-farm-controller:dev", "controller image reference (empty: not built)")
	flag.StringVar(&o.agent, "agent", "ghcr.io/guixfarm/guix-farm-agent:dev", "agent image reference (empty: not built)")
	flag.StringVar(&o.testDaemon, "test-daemon", "ghcr.io/guixfarm/guix-farm-test-daemon:dev", "test daemon image reference (empty: not built)")
	flag.Parse()
	o.arches = strings.Split(arches, ",")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "ocibuild:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	var goImages []goImage
	for _, g := range []struct{ ref, pkg string }{
		{o.controller, "./cmd/guix-farm-controller"},
		{o.agent, "./cmd/guix-farm-agent"},
	} {
		if g.ref == "" {
			continue
		}
		ref, err := parseRef(g.ref)
		if err != nil {
			return err
		}
		goImages = append(goImages, goImage{ref, g.pkg})
	}
	var testDaemon *name.Tag
	if o.testDaemon != "" {
		ref, err := parseRef(o.testDaemon)
		if err != nil {
			return err
		}
		testDaemon = &ref
	}

	b := &builder{dir: o.dir, out: o.out, arches: o.arches}
	if !filepath.IsAbs(b.out) {
		b.out = filepath.Join(o.dir, b.out)
	}
	if err := os.MkdirAll(b.out, 0o755); err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	var err error
	if b.src, err = readSource(ctx, o.dir); err != nil {
		return err
	}
	b.labels = map[string]string{"org.opencontainers.image.source": o.sourceURL}
	if b.src.revision != "" {
		b.labels["org.opencontainers.image.revision"] = b.src.revision
	}
	if b.tmp, err = os.MkdirTemp("", "ocibuild"); err != nil {
		return fmt.Errorf("temporary directory for the binaries: %w", err)
	}
	defer os.RemoveAll(b.tmp)
	bt, err := baseTree()
	if err != nil {
		return err
	}
	if b.base, err = b.layer(bt, "users root and nonroot (65532), /tmp, CA certificates"); err != nil {
		return err
	}

	if len(goImages) > 0 {
		if err := b.goImages(ctx, goImages); err != nil {
			return err
		}
	}
	if testDaemon != nil {
		return b.testDaemon(ctx, *testDaemon)
	}
	return nil
}

// parseRef parses an image reference, which must have a tag: without one it would silently be
// :latest.
func parseRef(ref string) (name.Tag, error) {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return name.Tag{}, fmt.Errorf("image reference %q: %w", ref, err)
	}
	return tag, nil
}

// layer builds a layer of t, described by what.
func (b *builder) layer(t *tree, what string) (namedLayer, error) {
	l, err := t.layer(b.src.epoch)
	if err != nil {
		return namedLayer{}, fmt.Errorf("layer %q: %w", what, err)
	}
	return namedLayer{layer: l, what: what}, nil
}

// goImages builds the images that each hold one command of the module, for every architecture.
func (b *builder) goImages(ctx context.Context, images []goImage) error {
	pkgs := make([]string, len(images))
	for i, g := range images {
		pkgs[i] = g.pkg
	}
	platforms := make([][]platformImage, len(images))
	for _, arch := range b.arches {
		bins, err := goBuild(ctx, b.dir, b.tmp, arch, pkgs)
		if err != nil {
			return err
		}
		for i, g := range images {
			entry := "/" + filepath.Base(g.pkg)
			t := newTree()
			t.file(entry, 0o755, bins[g.pkg])
			l, err := b.layer(t, entry+" (go build "+g.pkg+")")
			if err != nil {
				return err
			}
			cfg := imageConfig{user: nonrootUser, entrypoint: []string{entry}, labels: b.labels, created: b.src.epoch}
			img, err := newImage(cfg, arch, []namedLayer{b.base, l})
			if err != nil {
				return err
			}
			platforms[i] = append(platforms[i], img)
		}
	}
	for i, g := range images {
		if err := b.write(g.ref, newIndex(platforms[i])); err != nil {
			return err
		}
	}
	return nil
}

// testDaemon builds the test daemon image from the host's nix-daemon and busybox.
func (b *builder) testDaemon(ctx context.Context, ref name.Tag) error {
	specs, err := testDaemonLayers(ctx)
	if err != nil {
		return err
	}
	layers := []namedLayer{b.base}
	for _, s := range specs {
		l, err := b.layer(s.t, s.what)
		if err != nil {
			return err
		}
		layers = append(layers, l)
	}
	// Root: nix-daemon makes build sandboxes (namespaces, mounts, chroots).
	cfg := imageConfig{user: rootUser, entrypoint: []string{testDaemonEntrypoint}, labels: b.labels, created: b.src.epoch}
	// The host's own binaries: the image is for the architecture ocibuild runs on.
	img, err := newImage(cfg, runtime.GOARCH, layers)
	if err != nil {
		return err
	}
	return b.write(ref, newIndex([]platformImage{img}))
}

// write writes one image and prints a line about it.
func (b *builder) write(ref name.Tag, idx v1.ImageIndex) error {
	dir, err := writeImage(b.out, ref, idx, b.src.epoch)
	if err != nil {
		return err
	}
	digest, err := idx.Digest()
	if err != nil {
		return fmt.Errorf("digest of %s: %w", ref, err)
	}
	fi, err := os.Stat(dir + ".tar")
	if err != nil {
		return fmt.Errorf("the archive of %s: %w", ref, err)
	}
	fmt.Printf("%s %s %s (%.1f MiB)\n", ref, digest, dir+".tar", float64(fi.Size())/(1<<20))
	return nil
}
