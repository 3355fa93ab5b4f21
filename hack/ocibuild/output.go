package main

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// Annotations on the index's descriptor in the layout's index.json: containerd's importer names
// the image after the first, OCI tools after the second (a tag, as `ctr export` writes it).
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// writeImage writes idx, named ref, as the OCI image layout directory out/<name> and as the
// oci-archive out/<name>.tar (the same layout in one tar, which `ctr images import` and
// `skopeo copy oci-archive:` read). name is the last element of ref's repository.
func writeImage(out string, ref name.Tag, idx v1.ImageIndex, mtime time.Time) (string, error) {
	base := filepath.Base(ref.RepositoryStr())
	dir := filepath.Join(out, base)
	// A layout appends to its index.json: start afresh so the layout holds this build only.
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("clearing %s: %w", dir, err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return "", fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		annotationContainerdName: containerdName(ref),
		annotationRefName:        ref.TagStr(),
	})); err != nil {
		return "", fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	archive := filepath.Join(out, base+".tar")
	if err := writeArchive(dir, archive, mtime); err != nil {
		return "", err
	}
	return dir, nil
}

// containerdName is ref as containerd and the kubelet spell it: Docker Hub is docker.io (the
// kubelet looks up "docker.io/library/busybox:1", where go-containerregistry says index.docker.io).
func containerdName(ref name.Tag) string {
	if ref.RegistryStr() == name.DefaultRegistry {
		return "docker.io/" + ref.RepositoryStr() + ":" + ref.TagStr()
	}
	return ref.Name()
}

// writeArchive tars the layout directory dir into archive with the same rules as the layers
// (sorted, root-owned, one mtime, fixed modes), so the archive too is the same bytes from the same
// commit. It is written beside and renamed, so a reader never sees half an archive.
func writeArchive(dir, archive string, mtime time.Time) (err error) {
	tmp := archive + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("oci-archive: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	tw := tar.NewWriter(f)
	// WalkDir visits in lexical order: the entries are sorted.
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: filepath.ToSlash(rel), ModTime: mtime, Format: tar.FormatPAX}
		if d.IsDir() {
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, hdr.Name+"/", 0o755
			return tw.WriteHeader(hdr)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, 0o644, fi.Size()
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		return copyFile(tw, p)
	})
	if err != nil {
		return fmt.Errorf("oci-archive %s: %w", archive, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("oci-archive %s: %w", archive, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("oci-archive %s: %w", archive, err)
	}
	if err := os.Rename(tmp, archive); err != nil {
		return fmt.Errorf("oci-archive: %w", err)
	}
	return nil
}

func copyFile(w io.Writer, p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}
