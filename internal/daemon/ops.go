package daemon

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// Operation numbers (Nix worker-protocol.hh, Guix nix/libstore/worker-protocol.hh).
const (
	opIsValidPath             = 1
	opAddTextToStore          = 8
	opBuildPaths              = 9
	opEnsurePath              = 10
	opAddTempRoot             = 11
	opExportPath              = 16
	opSetOptions              = 19
	opCollectGarbage          = 20
	opQueryPathInfo           = 26
	opImportPaths             = 27
	opQueryValidPaths         = 31
	opQuerySubstitutablePaths = 32
	opNarFromPath             = 38
	opAddToStoreNar           = 39
)

// ErrNotValid is wrapped by the error of QueryPathInfo (and Nar) for a path
// that is not valid in the daemon's store.
var ErrNotValid = errors.New("path is not valid")

// simple runs an operation whose request is written by req, whose stderr
// stream carries only logs, and whose reply is read by reply.
func (c *Conn) simple(ctx context.Context, name string, sink LogSink, req func(e *encoder), reply func(o *op) error) (err error) {
	o, err := c.begin(ctx, name, sink)
	if err != nil {
		return err
	}
	defer func() { err = o.end(err) }()
	return o.call(req, reply)
}

// call sends a request, processes the stderr stream and reads the reply.
func (o *op) call(req func(e *encoder), reply func(o *op) error) error {
	req(&o.c.enc)
	if err := o.c.enc.flush(); err != nil {
		return err
	}
	if err := o.stderr(nil, nil); err != nil {
		return err
	}
	if reply == nil {
		return nil
	}
	return reply(o)
}

// IsValidPath reports whether path is valid in the daemon's store.
func (c *Conn) IsValidPath(ctx context.Context, path string) (bool, error) {
	if err := checkPaths("is valid path", path); err != nil {
		return false, err
	}
	var valid bool
	err := c.simple(ctx, "is valid path "+path, nil,
		func(e *encoder) { e.u64(opIsValidPath); e.string(path) },
		func(o *op) (err error) { valid, err = o.c.dec.bool(); return err })
	return valid, err
}

// PathInfo is what a daemon knows about a valid path.
type PathInfo struct {
	Path    string
	Deriver string // "" when none
	// NarHash is "sha256:<nixbase32>", whatever encoding the daemon used.
	NarHash          string
	References       []string
	RegistrationTime time.Time
	NarSize          uint64
	// Ultimate, Sigs and CA come from Nix >= 1.16; Guix doesn't send them.
	Ultimate bool
	Sigs     []string
	CA       string
}

// QueryPathInfo returns what the daemon knows about path, or an error
// wrapping ErrNotValid when the path is not valid.
func (c *Conn) QueryPathInfo(ctx context.Context, path string) (info *PathInfo, err error) {
	if err := checkPaths("query path info", path); err != nil {
		return nil, err
	}
	o, err := c.begin(ctx, "query path info "+path, nil)
	if err != nil {
		return nil, err
	}
	defer func() { err = o.end(err) }()
	return o.queryPathInfo(path)
}

func (o *op) queryPathInfo(path string) (*PathInfo, error) {
	c := o.c
	var info *PathInfo
	err := o.call(func(e *encoder) { e.u64(opQueryPathInfo); e.string(path) },
		func(o *op) error {
			var err error
			info, err = c.readPathInfo(path)
			return err
		})
	var de *Error
	if c.dialect == Guix && errors.As(err, &de) && isNotValidMessage(de.Message, path) {
		// Guix has no "found" flag: a missing path is an error frame
		// ("path `…' is not valid").
		return nil, fmt.Errorf("%w (%w)", ErrNotValid, de)
	}
	return info, err
}

// isNotValidMessage recognises Guix's InvalidPath message about path
// (local-store.cc queryPathInfo: "path `%1%' is not valid").
func isNotValidMessage(msg, path string) bool {
	return strings.Contains(msg, "`"+path+"' is not valid")
}

func (c *Conn) readPathInfo(path string) (*PathInfo, error) {
	d := &c.dec
	if c.nix(17) {
		found, err := d.bool()
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, ErrNotValid
		}
	}
	info := &PathInfo{Path: path}
	var err error
	if info.Deriver, err = d.string(maxPathLen); err != nil {
		return nil, err
	}
	hash, err := d.string(maxPathLen)
	if err != nil {
		return nil, err
	}
	if info.NarHash, err = normaliseHash(hash); err != nil {
		return nil, err
	}
	if info.References, err = d.strings(); err != nil {
		return nil, err
	}
	t, err := d.u64()
	if err != nil {
		return nil, err
	}
	if t > math.MaxInt64 {
		return nil, protoErr("registration time %d out of range", t)
	}
	info.RegistrationTime = time.Unix(int64(t), 0)
	if info.NarSize, err = d.u64(); err != nil {
		return nil, err
	}
	if c.nix(16) {
		if info.Ultimate, err = d.bool(); err != nil {
			return nil, err
		}
		if info.Sigs, err = d.strings(); err != nil {
			return nil, err
		}
		if info.CA, err = d.string(maxPathLen); err != nil {
			return nil, err
		}
	}
	return info, nil
}

// normaliseHash turns the daemon's NarHash (64 hex digits without prefix
// in Nix 2.8 and Guix; "sha256:" and hex or nixbase32 in other Nix
// versions) into "sha256:<nixbase32>", the form narinfos use.
func normaliseHash(s string) (string, error) {
	h := strings.TrimPrefix(s, "sha256:")
	if len(h) == 64 {
		b, err := hex.DecodeString(h)
		if err == nil {
			return nar.FormatHash(b), nil
		}
	}
	if len(h) == 52 && len(s) == len(h)+len("sha256:") && isNixBase32(h) {
		return s, nil
	}
	return "", protoErr("NarHash %q is neither hex nor nix-base32 SHA-256", s)
}

func isNixBase32(s string) bool {
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
	for i := range len(s) {
		if strings.IndexByte(alphabet, s[i]) < 0 {
			return false
		}
	}
	return true
}

// QueryValidPaths returns the valid ones among paths. With substitute, a
// Nix >= 1.27 daemon first tries to substitute the missing ones; Guix has no
// such flag and never substitutes here.
func (c *Conn) QueryValidPaths(ctx context.Context, paths []string, substitute bool) ([]string, error) {
	if err := checkPaths("query valid paths", paths...); err != nil {
		return nil, err
	}
	var valid []string
	err := c.simple(ctx, "query valid paths", nil,
		func(e *encoder) {
			e.u64(opQueryValidPaths)
			e.strings(paths)
			if c.nix(27) {
				e.bool(substitute)
			}
		},
		func(o *op) (err error) { valid, err = o.c.dec.strings(); return err })
	return valid, err
}

// QuerySubstitutablePaths returns those of paths that a substituter has.
func (c *Conn) QuerySubstitutablePaths(ctx context.Context, paths []string) ([]string, error) {
	if err := checkPaths("query substitutable paths", paths...); err != nil {
		return nil, err
	}
	var subst []string
	err := c.simple(ctx, "query substitutable paths", nil,
		func(e *encoder) { e.u64(opQuerySubstitutablePaths); e.strings(paths) },
		func(o *op) (err error) { subst, err = o.c.dec.strings(); return err })
	return subst, err
}

// EnsurePath makes path valid, substituting it if needed (a .drv is
// substituted, not built).
func (c *Conn) EnsurePath(ctx context.Context, path string) error {
	if err := checkPaths("ensure path", path); err != nil {
		return err
	}
	return c.simple(ctx, "ensure path "+path, nil,
		func(e *encoder) { e.u64(opEnsurePath); e.string(path) },
		(*op).readOK)
}

// AddTempRoot keeps path from the garbage collector for as long as the
// connection is open.
func (c *Conn) AddTempRoot(ctx context.Context, path string) error {
	if err := checkPaths("add temp root", path); err != nil {
		return err
	}
	return c.simple(ctx, "add temp root "+path, nil,
		func(e *encoder) { e.u64(opAddTempRoot); e.string(path) },
		(*op).readOK)
}

// AddTextToStore adds a text file (a .drv, a builder script) with the given
// references and returns its store path.
func (c *Conn) AddTextToStore(ctx context.Context, name string, content []byte, refs []string) (string, error) {
	if err := checkPaths("add text to store", refs...); err != nil {
		return "", err
	}
	if err := storepath.ValidateName(name); err != nil {
		return "", fmt.Errorf("daemon: add text to store: %w: %w", ErrInvalidArgument, err)
	}
	var path string
	err := c.simple(ctx, "add text to store "+name, nil,
		func(e *encoder) {
			e.u64(opAddTextToStore)
			e.string(name)
			e.bytes(content)
			e.strings(refs)
		},
		func(o *op) (err error) { path, err = o.c.dec.string(maxPathLen); return err })
	return path, err
}

// GCAction is what CollectGarbage does.
type GCAction uint64

const (
	GCReturnLive     GCAction = 0 // list the live paths
	GCReturnDead     GCAction = 1 // list the dead paths
	GCDeleteDead     GCAction = 2 // delete the dead paths
	GCDeleteSpecific GCAction = 3 // delete Paths, if they are dead
)

// GCOptions is the request of CollectGarbage.
type GCOptions struct {
	Action GCAction
	Paths  []string // for GCDeleteSpecific
	// IgnoreLiveness deletes even live paths (Nix trusted clients only;
	// Guix always refuses).
	IgnoreLiveness bool
	// MaxFreed stops after this many bytes; 0 means no limit.
	MaxFreed uint64
}

// GCResult is what CollectGarbage reports.
type GCResult struct {
	Paths      []string // deleted, or listed
	BytesFreed uint64
}

// CollectGarbage runs the daemon's garbage collector.
func (c *Conn) CollectGarbage(ctx context.Context, o GCOptions) (GCResult, error) {
	if err := checkPaths("collect garbage", o.Paths...); err != nil {
		return GCResult{}, err
	}
	var res GCResult
	maxFreed := o.MaxFreed
	if maxFreed == 0 {
		// Both daemons take the limit literally; "no limit" is the
		// largest value, as their own clients send.
		maxFreed = math.MaxUint64
	}
	err := c.simple(ctx, "collect garbage", nil,
		func(e *encoder) {
			e.u64(opCollectGarbage)
			e.u64(uint64(o.Action))
			e.strings(o.Paths)
			e.bool(o.IgnoreLiveness)
			e.u64(maxFreed)
			// Three obsolete words, read and ignored by both daemons.
			e.u64(0)
			e.u64(0)
			e.u64(0)
		},
		func(op *op) (err error) {
			d := &op.c.dec
			if res.Paths, err = d.strings(); err != nil {
				return err
			}
			if res.BytesFreed, err = d.u64(); err != nil {
				return err
			}
			_, err = d.u64() // obsolete
			return err
		})
	return res, err
}
