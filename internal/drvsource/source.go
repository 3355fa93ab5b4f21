// Package drvsource is where the controller reads .drv files from, with a
// bounded cache of raw files and of parsed derivation Facts.
//
// Implementations so far: Dir (a local directory or store). A bucket source
// (narinfo + NAR decoding of the .drv's store path from the binary cache) is
// planned; it plugs in by implementing Source and following the error
// contract below, and is wrapped by NewCached / NewFactsCache like any other.
package drvsource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// Error contract for every Source: wrap ErrNotFound when the .drv does not
// exist (yet), ErrInvalid when the request or the file can never succeed;
// anything else is transient and worth retrying with backoff.
var (
	// ErrNotFound: the source has no such .drv. It may appear later (an
	// upload still in flight), so retry slowly and surface a condition.
	ErrNotFound = errors.New("derivation not found")
	// ErrInvalid: a malformed path, an oversized or unparsable file. Retrying
	// does not help; the Build's spec or the uploaded file must be fixed.
	ErrInvalid = errors.New("invalid derivation")
)

// IsTransient reports whether err is worth retrying as is: neither
// ErrNotFound, ErrInvalid nor a context cancellation.
func IsTransient(err error) bool {
	return err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrInvalid) &&
		!errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// Source reads the contents of a .drv file given its full store path.
// Implementations must be safe for concurrent use.
type Source interface {
	Read(ctx context.Context, drvPath string) ([]byte, error)
}

// Dir reads .drv files named by their store base name ("<hash>-<name>.drv")
// from a local directory: a store directory itself or a flat copy of one.
type Dir struct {
	// Root is the directory holding the files.
	Root string
	// Store is the store directory drv paths must be in (default /gnu/store).
	Store storepath.Dir
	// MaxSize bounds a file (default derivation.DefaultMaxSize).
	MaxSize int
}

// NewDir returns a Dir source reading files from root for paths in store.
func NewDir(root string, store storepath.Dir) *Dir {
	return &Dir{Root: root, Store: store}
}

// Read implements Source.
func (d *Dir) Read(ctx context.Context, drvPath string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	store := d.Store
	if store == "" {
		store = storepath.DefaultDir
	}
	p, err := store.ParseDerivation(drvPath)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	maxSize := d.MaxSize
	if maxSize <= 0 {
		maxSize = derivation.DefaultMaxSize
	}
	// The base name was validated, so it cannot escape Root.
	name := filepath.Join(d.Root, p.Base())
	f, err := os.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: no file %s: %w", drvPath, name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", drvPath, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(maxSize)+1))
	if err != nil {
		return nil, fmt.Errorf("read %s from %s: %w", drvPath, name, err)
	}
	if len(b) > maxSize {
		return nil, fmt.Errorf("read %s: %s is larger than %d bytes: %w", drvPath, name, maxSize, ErrInvalid)
	}
	return b, nil
}
