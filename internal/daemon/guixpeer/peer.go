// Package guixpeer is a conformance peer for the Guix dialect of the worker
// protocol: a fake guix-daemon with an in-memory store that answers one
// client connection per Serve call the way guix-daemon does, for daemon
// protocol versions 0x163 and 0x164.
//
// It is written from Guix's own sources (Millak/guix mirror), cited by file
// and function throughout: nix/nix-daemon/nix-daemon.cc (processConnection,
// performOp), nix/libstore/local-store.cc, build.cc, gc.cc, store-api.cc,
// nix/libutil/serialise.cc, archive.cc, util.cc, and the client side in
// guix/store.scm. Each connection has its own settings, as each of
// guix-daemon's connections is a forked process; the store is shared.
//
// What is modelled: the framing and its checks, the handshake, the stderr
// stream (NEXT messages gated by the client's verbosity and prefixed per its
// log type, build traces, multiplexed build logs, READ and WRITE tunnelling,
// ERROR frames with their status), and the store operations' requests,
// replies and error texts. What is not: build hooks (offload), build-repeat
// rounds, allowedReferences checks, failure caching, substituter failures
// and download progress, and the random order of GC deletions (the peer goes
// in sorted order). Builds are sequential depth-first where guix-daemon
// interleaves goals, so traces of multi-derivation builds can come in
// another order than Guix's (each goal's own messages keep their order).
package guixpeer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// StoreDir is the store directory the peer serves (Guix's default).
const StoreDir = "/gnu/store"

// DefaultSubstituteURLs is guix-daemon's built-in GUIX_SUBSTITUTE_URLS,
// what it uses when started without --substitute-urls.
var DefaultSubstituteURLs = []string{"https://bordeaux.guix.gnu.org", "https://ci.guix.gnu.org"}

// BuildFunc plays a derivation's builder: it writes the builder's output
// to out and returns the NAR of each output it produced, by output name, or
// an error for a builder that failed (an error with an ExitCode() int
// method, like *exec.ExitError, sets the exit code; otherwise it is 1). ctx
// is cancelled when the build times out or the connection ends.
type BuildFunc func(ctx context.Context, out io.Writer) (outputs map[string][]byte, err error)

// Peer is a fake guix-daemon. Set its exported fields before the first
// Serve; they are read, never written, while connections are served.
type Peer struct {
	// Trusted says whether a Unix-socket client counts as trusted.
	// guix-daemon trusts a Unix peer whose uid is 0 (acceptConnection);
	// TCP clients are never trusted. An untrusted client's unknown
	// SetOptions overrides are stored as "untrusted-<name>", and it may not
	// repair.
	Trusted bool
	// System is the daemon's system type (settings.thisSystem); a build
	// for another platform fails as on a daemon without emulation.
	// Default "x86_64-linux".
	System string
	// SubstituteURLs are the daemon's own --substitute-urls; nil means
	// DefaultSubstituteURLs.
	SubstituteURLs []string
	// NoSubstitutes models guix-daemon --no-substitutes.
	NoSubstitutes bool
	// Authorize stands in for `guix authenticate verify` and the ACL in
	// /etc/guix/acl: it reports whether sig, an imported record's
	// signature, is a valid signature by an authorized key over
	// recordHash, the SHA-256 of the record from the NAR to the deriver.
	// nil refuses every signature, like an empty ACL.
	Authorize func(sig string, recordHash []byte) bool
	// Sign stands in for `guix authenticate sign` with
	// /etc/guix/signing-key.sec, for ExportPath with sign = 1. nil makes
	// such exports fail as on a daemon without a signing key.
	Sign func(recordHash []byte) (string, error)

	version uint64

	mu         sync.Mutex
	valid      map[string]*pathInfo // the valid paths
	substitute map[string]*pathInfo // what substituters could provide
	builders   map[string]BuildFunc
	options    Options
	tempRoots  map[string]bool // every temp root ever added, for TempRoots
	live       map[*conn]bool  // open connections, whose temp roots are GC roots
	pid        int             // last fake builder pid
}

// pathInfo is one store item (ValidPathInfo plus its contents). It is
// immutable once made, so readers may keep it without the lock.
type pathInfo struct {
	nar     []byte
	narHash [sha256.Size]byte
	refs    []string // sorted
	deriver string
	regTime int64
	drv     *derivation.Derivation // for a .drv, parsed
}

// Options is what the last SetOptions (op 19) carried, field by field as
// nix-daemon.cc performOp reads it for the client's declared version.
type Options struct {
	KeepFailed, KeepGoing, TryFallback bool
	Verbosity                          uint64
	// MaxBuildJobs and MaxSilentTime are sent only by clients whose
	// minor version is below 0x61; BuildCores only for 6 <= minor < 0x61.
	MaxBuildJobs, MaxSilentTime, BuildCores uint64
	UseBuildHook                            bool   // minor >= 2
	BuildVerbosity, LogType                 uint64 // minor >= 4
	PrintBuildTrace                         bool   // minor >= 4
	UseSubstitutes                          bool   // minor >= 10
	// Overrides are the name/value pairs (minor >= 12), as sent.
	Overrides map[string]string
}

// New returns a peer announcing daemon protocol version 0x163 or 0x164,
// with an empty store.
func New(version uint64) *Peer {
	if version != 0x163 && version != 0x164 {
		panic(fmt.Sprintf("guixpeer: protocol version %#x: guix-daemon speaks 0x163 or 0x164", version))
	}
	return &Peer{
		System:     "x86_64-linux",
		version:    version,
		valid:      map[string]*pathInfo{},
		substitute: map[string]*pathInfo{},
		builders:   map[string]BuildFunc{},
		tempRoots:  map[string]bool{},
		live:       map[*conn]bool{},
	}
}

// AddPath makes path valid with the given NAR, references and deriver
// ("" for none), as if it had been built or substituted earlier. It
// panics on a malformed path, NAR or .drv, being test setup; references
// need not be valid yet, so paths may be added in any order.
func (p *Peer) AddPath(path string, narBytes []byte, refs []string, deriver string) {
	info := mustInfo("AddPath", path, narBytes, refs, deriver)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.valid[path] = info
}

// AddSubstitute makes path available from the (fake) substituter:
// EnsurePath, BuildPaths and derivation goals fetch it from there when
// substitutes are enabled, and QuerySubstitutablePaths lists it.
func (p *Peer) AddSubstitute(path string, narBytes []byte, refs []string, deriver string) {
	info := mustInfo("AddSubstitute", path, narBytes, refs, deriver)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.substitute[path] = info
}

// OnBuild sets what building derivation drv does. Without one, the builder
// "succeeds" without producing anything, which Guix reports as "builder
// for ... failed to produce output path ...".
func (p *Peer) OnBuild(drv string, fn BuildFunc) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.builders[drv] = fn
}

// Options returns what the last SetOptions on any connection carried.
func (p *Peer) Options() Options {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := p.options
	if o.Overrides != nil {
		m := make(map[string]string, len(o.Overrides))
		for k, v := range o.Overrides {
			m[k] = v
		}
		o.Overrides = m
	}
	return o
}

// TempRoots returns, sorted, every path any connection made a temporary GC
// root, by AddTempRoot or inside the daemon (addTextToStore, importPath,
// derivation and substitution goals add their paths too). guix-daemon
// forgets a connection's temp roots when it closes; the peer keeps them
// here so tests can look, but GC counts only open connections' roots.
func (p *Peer) TempRoots() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for r := range p.tempRoots {
		out = append(out, r)
	}
	sort.Strings(out)
	return out
}

// IsValid reports whether path is valid in the peer's store.
func (p *Peer) IsValid(path string) bool {
	_, ok := p.info(path)
	return ok
}

// PathNAR returns the NAR of a valid path.
func (p *Peer) PathNAR(path string) ([]byte, bool) {
	info, ok := p.info(path)
	if !ok {
		return nil, false
	}
	return info.nar, true
}

func mustInfo(what, path string, narBytes []byte, refs []string, deriver string) *pathInfo {
	if err := checkStorePath(path); err != nil {
		panic(fmt.Sprintf("guixpeer: %s: %v", what, err))
	}
	for _, r := range append(append([]string(nil), refs...), deriver) {
		if r != "" {
			if err := checkStorePath(r); err != nil {
				panic(fmt.Sprintf("guixpeer: %s %s: %v", what, path, err))
			}
		}
	}
	if _, err := nar.Validate(bytes.NewReader(narBytes)); err != nil {
		panic(fmt.Sprintf("guixpeer: %s %s: %v", what, path, err))
	}
	info, err := newInfo(path, narBytes, refs, deriver)
	if err != nil {
		panic(fmt.Sprintf("guixpeer: %s: %v", what, err))
	}
	return info
}

// newInfo makes the record of a store item, parsing it when it is a .drv
// (LocalStore::addValidPath reads every derivation it registers).
func newInfo(path string, narBytes []byte, refs []string, deriver string) (*pathInfo, error) {
	info := &pathInfo{
		nar:     narBytes,
		narHash: sha256.Sum256(narBytes),
		refs:    sortedSet(refs),
		deriver: deriver,
		regTime: time.Now().Unix(),
	}
	if strings.HasSuffix(path, storepath.DrvExt) {
		text, err := nar.ReadSingleFile(bytes.NewReader(narBytes), derivation.DefaultMaxSize)
		if err != nil {
			return nil, fmt.Errorf("derivation %s: %w", path, err)
		}
		if info.drv, err = derivation.Parse(text); err != nil {
			return nil, fmt.Errorf("derivation %s: %w", path, err)
		}
	}
	return info, nil
}

// checkStorePath validates a path fully (hash part and name), which
// test setup should get right; the daemon itself checks less
// (assertStorePath).
func checkStorePath(s string) error {
	_, err := storepath.Dir(StoreDir).Parse(s)
	return err
}

func (p *Peer) info(path string) (*pathInfo, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	info, ok := p.valid[path]
	return info, ok
}

func (p *Peer) substitutable(path string) (*pathInfo, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	info, ok := p.substitute[path]
	return info, ok
}

func (p *Peer) builder(drv string) BuildFunc {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.builders[drv]
}

func (p *Peer) nextPID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pid == 0 {
		p.pid = 4000
	}
	p.pid++
	return p.pid
}

// register is LocalStore::registerValidPaths: every reference must be
// valid or among the paths registered together (queryValidPathId), and a
// derivation's output paths must be the ones its contents imply
// (checkDerivationOutputs). Paths already valid are left as they are.
func (p *Peer) register(paths []string, infos []*pathInfo) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	batch := map[string]bool{}
	for _, path := range paths {
		batch[path] = true
	}
	for i, info := range infos {
		for _, r := range info.refs {
			if _, ok := p.valid[r]; !ok && !batch[r] {
				return errorf("path `%s' is not valid", r)
			}
		}
		if info.drv != nil {
			if err := p.checkDerivationOutputsLocked(paths[i], info.drv); err != nil {
				return err
			}
		}
	}
	for i, path := range paths {
		if _, ok := p.valid[path]; !ok {
			p.valid[path] = infos[i]
		}
	}
	return nil
}

// checkDerivationOutputsLocked is LocalStore::checkDerivationOutputs,
// using the repository's derivation package to recompute output paths.
func (p *Peer) checkDerivationOutputsLocked(drvPath string, drv *derivation.Derivation) error {
	name, err := derivation.Name(drvPath)
	if err != nil {
		return errorf("%v", err)
	}
	resolve := func(in string) (*derivation.Derivation, error) {
		info, ok := p.valid[in]
		if !ok || info.drv == nil {
			return nil, fmt.Errorf("path `%s' is not valid", in)
		}
		return info.drv, nil
	}
	want, err := drv.ComputeOutputPaths(storepath.Dir(StoreDir), name, resolve)
	if err != nil {
		return errorf("%v", err)
	}
	for _, o := range drv.Outputs {
		env, _ := drv.Getenv(o.Name)
		if o.Path != want[o.Name] || env != want[o.Name] {
			return errorf("derivation `%s' has incorrect output `%s', should be `%s'", drvPath, o.Path, want[o.Name])
		}
	}
	return nil
}

// referrers is queryReferrers: the valid paths that refer to path.
func (p *Peer) referrers(path string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for q, info := range p.valid {
		if i := sort.SearchStrings(info.refs, path); i < len(info.refs) && info.refs[i] == path {
			out = append(out, q)
		}
	}
	sort.Strings(out)
	return out
}

// validDerivers is queryValidDerivers: valid derivations with an output
// at path (the DerivationOutputs table).
func (p *Peer) validDerivers(path string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for q, info := range p.valid {
		if info.drv == nil {
			continue
		}
		for _, o := range info.drv.Outputs {
			if o.Path == path {
				out = append(out, q)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// allValid is queryAllValidPaths.
func (p *Peer) allValid() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.valid))
	for q := range p.valid {
		out = append(out, q)
	}
	sort.Strings(out)
	return out
}

// closure is computeFSClosure over references.
func (p *Peer) closure(paths []string, into map[string]bool) error {
	for _, path := range paths {
		if into[path] {
			continue
		}
		info, ok := p.info(path)
		if !ok {
			return errorf("path `%s' is not valid", path)
		}
		into[path] = true
		if err := p.closure(info.refs, into); err != nil {
			return err
		}
	}
	return nil
}

func (p *Peer) addTempRoot(c *conn, path string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tempRoots[path] = true
	c.tempRoots[path] = true
}
