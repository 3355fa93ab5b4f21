package main

import (
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// defaultPath is the PATH of every image, the only variable they set: everything else comes from
// flags and the pod spec.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// imageConfig is what differs between our images besides their layers.
type imageConfig struct {
	user       string
	entrypoint []string
	labels     map[string]string
	created    time.Time
}

// layerSpec is a layer's content and the line that says what it holds in the image's history
// (`crane config`, `docker history`).
type layerSpec struct {
	t    *tree
	what string
}

// namedLayer is a layerSpec built.
type namedLayer struct {
	layer v1.Layer
	what  string
}

// platformImage is one architecture's image of a multi-arch index.
type platformImage struct {
	arch string
	img  v1.Image
}

// newImage is an OCI image (OCI media types throughout: containerd and every registry take them)
// for linux/arch made of layers.
func newImage(cfg imageConfig, arch string, layers []namedLayer) (platformImage, error) {
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	created := v1.Time{Time: cfg.created}
	img, err := mutate.ConfigFile(img, &v1.ConfigFile{
		Architecture: arch,
		OS:           "linux",
		Created:      created,
		Config: v1.Config{
			User:       cfg.user,
			Entrypoint: cfg.entrypoint,
			WorkingDir: "/",
			Env:        []string{defaultPath},
			Labels:     cfg.labels,
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return platformImage{}, fmt.Errorf("image config: %w", err)
	}
	adds := make([]mutate.Addendum, len(layers))
	for i, l := range layers {
		adds[i] = mutate.Addendum{Layer: l.layer, History: v1.History{Created: created, CreatedBy: "hack/ocibuild: " + l.what}}
	}
	if img, err = mutate.Append(img, adds...); err != nil {
		return platformImage{}, fmt.Errorf("image layers: %w", err)
	}
	return platformImage{arch: arch, img: img}, nil
}

// newIndex is the multi-arch index of one image: a node pulls the manifest of its own platform.
func newIndex(images []platformImage) v1.ImageIndex {
	adds := make([]mutate.IndexAddendum, len(images))
	for i, p := range images {
		adds[i] = mutate.IndexAddendum{Add: p.img, Descriptor: v1.Descriptor{
			MediaType: types.OCIManifestSchema1,
			Platform:  &v1.Platform{OS: "linux", Architecture: p.arch},
		}}
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
}
