package testbed

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"
)

// OCIImage is a single-platform, single-layer image for a node without a registry: written as an
// oci-archive that `ctr -n k8s.io images import` takes (WriteOCIArchive).
type OCIImage struct {
	// Ref is the name containerd gives the image (e.g. registry.k8s.io/pause:3.10.2); pods name it
	// in their image field, with imagePullPolicy Never.
	Ref   string
	Files []OCIFile
	// Entrypoint, Cmd, Env and User are the image config's.
	Entrypoint, Cmd, Env []string
	User                 string
}

// OCIFile is one entry of the image's layer: a regular file (Data), a directory (Dir) or a
// symbolic link (Link). Parent directories are added as needed.
type OCIFile struct {
	Path string
	Mode int64
	Data []byte
	Dir  bool
	Link string
}

// BusyboxFiles is the host's static busybox at /bin/busybox with a /bin link for each applet (so
// that sh, sleep, id... are on the default PATH), and /tmp. The busybox comes from Debian's
// busybox-static (hack/tools.sh nix).
func BusyboxFiles(busybox string) ([]OCIFile, error) {
	data, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("reading busybox for an image: %w", err)
	}
	out, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("listing busybox's applets: %w", err)
	}
	files := []OCIFile{{Path: "bin/busybox", Mode: 0o755, Data: data}, {Path: "tmp", Mode: 0o1777, Dir: true}}
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" {
			files = append(files, OCIFile{Path: "bin/" + applet, Link: "busybox"})
		}
	}
	return files, nil
}

// WriteOCIArchive writes img as an OCI image layout in a tar file at p. The layer is an
// uncompressed tar (a valid OCI media type; its digest is its diff ID), and every timestamp is the
// epoch, so the same files make the same digests.
func WriteOCIArchive(p string, img OCIImage) error {
	layer, err := layerTar(img.Files)
	if err != nil {
		return fmt.Errorf("image %s: %w", img.Ref, err)
	}
	layerDigest := digest(layer)
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config": map[string]any{
			"Entrypoint": img.Entrypoint, "Cmd": img.Cmd, "Env": img.Env, "User": img.User,
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
		"history": []map[string]any{{"created_by": "guix-farm test/testbed WriteOCIArchive"}},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor("application/vnd.oci.image.config.v1+json", config, nil),
		"layers":        []any{descriptor("application/vnd.oci.image.layer.v1.tar", layer, nil)},
	})
	if err != nil {
		return err
	}
	_, tag, _ := strings.Cut(path.Base(img.Ref), ":")
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		// containerd names the imported image after io.containerd.image.name; the OCI annotation
		// is for other tools (skopeo, crane).
		"manifests": []any{withPlatform(descriptor("application/vnd.oci.image.manifest.v1+json", manifest, map[string]string{
			"io.containerd.image.name":          img.Ref,
			"org.opencontainers.image.ref.name": tag,
		}))},
	})
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	entries := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blobPath(config), config},
		{blobPath(manifest), manifest},
		{blobPath(layer), layer},
	}
	for _, e := range entries {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}); err != nil {
			return err
		}
		if _, err := tw.Write(e.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing the oci-archive of %s: %w", img.Ref, err)
	}
	return nil
}

func layerTar(files []OCIFile) ([]byte, error) {
	byPath := map[string]OCIFile{}
	for _, f := range files {
		p := path.Clean(strings.TrimPrefix(f.Path, "/"))
		f.Path = p
		byPath[p] = f
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, ok := byPath[d]; !ok {
				byPath[d] = OCIFile{Path: d, Mode: 0o755, Dir: true}
			}
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths) // parents first, and the same bytes every time
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		f := byPath[p]
		h := &tar.Header{Name: p, Mode: f.Mode, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		switch {
		case f.Dir:
			h.Typeflag, h.Name = tar.TypeDir, p+"/"
		case f.Link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.Link, 0o777
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", p, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func blobPath(b []byte) string { return "blobs/sha256/" + strings.TrimPrefix(digest(b), "sha256:") }

// withPlatform says in the index which platform a manifest is for: ctr import keeps only the
// host's platform's content and would otherwise read each config to find out.
func withPlatform(d map[string]any) map[string]any {
	d["platform"] = map[string]string{"architecture": runtime.GOARCH, "os": "linux"}
	return d
}

func descriptor(mediaType string, b []byte, annotations map[string]string) map[string]any {
	d := map[string]any{"mediaType": mediaType, "digest": digest(b), "size": len(b)}
	if annotations != nil {
		d["annotations"] = annotations
	}
	return d
}

// OCIArchiveRef is the name `ctr images import` gives the image of an oci-archive (its index's
// io.containerd.image.name annotation): what a pod names to run it.
func OCIArchiveRef(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("opening oci-archive: %w", err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			return "", fmt.Errorf("oci-archive %s: no index.json: %w", p, err)
		}
		if path.Clean(h.Name) != "index.json" {
			continue
		}
		var index struct {
			Manifests []struct {
				Annotations map[string]string `json:"annotations"`
			} `json:"manifests"`
		}
		if err := json.NewDecoder(tr).Decode(&index); err != nil {
			return "", fmt.Errorf("oci-archive %s: index.json: %w", p, err)
		}
		for _, m := range index.Manifests {
			if ref := m.Annotations["io.containerd.image.name"]; ref != "" {
				return ref, nil
			}
		}
		return "", fmt.Errorf("oci-archive %s: no manifest is annotated io.containerd.image.name", p)
	}
}
