package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// tree is the content of one layer, keyed by absolute path in the image. It is written as a tar
// sorted by path, every entry with the same time and root as owner, so the same content always
// gives the same layer digest whatever the build host's umask, clock or user.
type tree struct {
	entries map[string]entry
}

type entry struct {
	typ    byte // tar.TypeReg, tar.TypeDir or tar.TypeSymlink
	mode   int64
	data   []byte
	target string // of a symlink
	owner  int    // uid and gid; 0 but for a home directory
}

func newTree() *tree { return &tree{entries: map[string]entry{}} }

func (t *tree) dir(p string, mode int64) { t.ownedDir(p, mode, 0) }

func (t *tree) ownedDir(p string, mode int64, owner int) {
	t.entries[path.Clean(p)] = entry{typ: tar.TypeDir, mode: mode, owner: owner}
}

func (t *tree) file(p string, mode int64, data []byte) {
	t.entries[path.Clean(p)] = entry{typ: tar.TypeReg, mode: mode, data: data}
}

func (t *tree) symlink(p, target string) {
	t.entries[path.Clean(p)] = entry{typ: tar.TypeSymlink, mode: 0o777, target: target}
}

// hostFile copies the build host's file src (symlinks followed) to p, keeping its permission
// bits: a shared library stays 0644 and a loader 0755.
func (t *tree) hostFile(p, src string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("host file for %s: %w", p, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("host file %s for %s is not a regular file", src, p)
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("host file for %s: %w", p, err)
	}
	t.file(p, int64(fi.Mode().Perm()), data)
	return nil
}

// tar writes the tree as an uncompressed tar. Missing parent directories are added (0755): a
// runtime would otherwise make them with its own defaults.
func (t *tree) tar(w io.Writer, mtime time.Time) error {
	all := map[string]entry{}
	for p, e := range t.entries {
		all[p] = e
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if _, ok := t.entries[d]; !ok {
				all[d] = entry{typ: tar.TypeDir, mode: 0o755}
			}
		}
	}
	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	for _, p := range paths {
		e := all[p]
		hdr := &tar.Header{
			Typeflag: e.typ,
			Name:     strings.TrimPrefix(p, "/"),
			Linkname: e.target,
			Mode:     e.mode,
			Size:     int64(len(e.data)),
			Uid:      e.owner,
			Gid:      e.owner,
			ModTime:  mtime,
			Format:   tar.FormatPAX,
		}
		if e.typ == tar.TypeDir {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("tar header %s: %w", p, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return fmt.Errorf("tar %s: %w", p, err)
		}
	}
	return tw.Close()
}

// layer is the tree as a gzip-compressed OCI layer. It is compressed here, with the standard
// library's deterministic gzip (no name, no time in the header), rather than by
// go-containerregistry on the fly, so the compressed bytes, hence the digest, are computed once.
func (t *tree) layer(mtime time.Time) (v1.Layer, error) {
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	if err := t.tar(zw, mtime); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("compressing layer: %w", err)
	}
	compressed := gz.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(compressed)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return l, nil
}
