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
	ref string
	pkg string
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
	refs := map[string]name.Tag{}
	for _, r := range []string{o.controller, o.agent, o.testDaemon} {
		if r == "" {
			continue
		}
		// Strict: a reference without a tag would silently become :latest.
		tag, err := name.NewTag(r, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("image reference %q: %w", r, err)
		}
		refs[r] = tag
	}
	src, err := readSource(ctx, o.dir)
	if err != nil {
		return err
	}
	labels := map[string]string{"org.opencontainers.image.source": o.sourceURL}
	if src.revision != "" {
		labels["org.opencontainers.image.revision"] = src.revision
	}
	out := o.out
	if !filepath.IsAbs(out) {
		out = filepath.Join(o.dir, out)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	tmp, err := os.MkdirTemp("", "ocibuild")
	if err != nil {
		return fmt.Errorf("temporary directory for the binaries: %w", err)
	}
	defer os.RemoveAll(tmp)

	bt, err := baseTree()
	if err != nil {
		return err
	}
	base, err := layerSpec{bt, "users root and nonroot (65532), /tmp, CA certificates"}.build(src.epoch)
	if err != nil {
		return err
	}

	var goImages []goImage
	for _, g := range []goImage{{o.controller, "./cmd/guix-farm-controller"}, {o.agent, "./cmd/guix-farm-agent"}} {
		if g.ref != "" {
			goImages = append(goImages, g)
		}
	}
	if len(goImages) > 0 {
		if err := buildGoImages(ctx, o, goImages, refs, base, labels, src, tmp, out); err != nil {
			return err
		}
	}

	if o.testDaemon != "" {
		specs, err := testDaemonLayers(ctx)
		if err != nil {
			return err
		}
		layers := []namedLayer{base}
		for _, s := range specs {
			l, err := s.build(src.epoch)
			if err != nil {
				return err
			}
			layers = append(layers, l)
		}
		// Root: nix-daemon makes build sandboxes (namespaces, mounts, chroots).
		cfg := imageConfig{user: rootUser, entrypoint: []string{testDaemonEntrypoint}, labels: labels, created: src.epoch}
		// The host's own binaries: the image is for the architecture ocibuild runs on.
		img, err := newImage(cfg, runtime.GOARCH, layers)
		if err != nil {
			return err
		}
		if err := write(out, refs[o.testDaemon], newIndex([]platformImage{img}), src); err != nil {
			return err
		}
	}
	return nil
}

// buildGoImages builds the images that each hold one command of the module, for every architecture.
func buildGoImages(ctx context.Context, o options, images []goImage, refs map[string]name.Tag, base namedLayer, labels map[string]string, src source, tmp, out string) error {
	pkgs := make([]string, len(images))
	for i, g := range images {
		pkgs[i] = g.pkg
	}
	platforms := make([][]platformImage, len(images))
	for _, arch := range o.arches {
		bins, err := goBuild(ctx, o.dir, tmp, arch, pkgs)
		if err != nil {
			return err
		}
		for i, g := range images {
			entry := "/" + filepath.Base(g.pkg)
			t := newTree()
			t.file(entry, 0o755, bins[g.pkg])
			l, err := layerSpec{t, entry + " (go build " + g.pkg + ")"}.build(src.epoch)
			if err != nil {
				return err
			}
			cfg := imageConfig{user: nonrootUser, entrypoint: []string{entry}, labels: labels, created: src.epoch}
			img, err := newImage(cfg, arch, []namedLayer{base, l})
			if err != nil {
				return err
			}
			platforms[i] = append(platforms[i], img)
		}
	}
	for i, g := range images {
		if err := write(out, refs[g.ref], newIndex(platforms[i]), src); err != nil {
			return err
		}
	}
	return nil
}

// write writes one image and prints a line about it.
func write(out string, ref name.Tag, idx v1.ImageIndex, src source) error {
	dir, err := writeImage(out, ref, idx, src.epoch)
	if err != nil {
		return err
	}
	digest, err := idx.Digest()
	if err != nil {
		return fmt.Errorf("digest of %s: %w", ref, err)
	}
	fi, err := os.Stat(dir + ".tar")
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s (%.1f MiB)\n", ref, digest, dir+".tar", float64(fi.Size())/(1<<20))
	return nil
}
