package derivation

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"

	"github.com/guixfarm/guix-farm/internal/storepath"
)

// Resolver returns the parsed derivation stored at drvPath. HashModulo and
// ComputeOutputPaths call it for every input derivation in the closure.
type Resolver func(drvPath string) (*Derivation, error)

// HashModulo is Nix's hashDerivationModulo (Guix derivation-hash) of d: for a
// fixed-output derivation SHA-256 of "fixed:out:<algo>:<hex>:<path>", which
// makes the hash independent of how the download is done; otherwise SHA-256
// of the ATerm with each input derivation path replaced by the hex of its own
// modulo hash. resolve is called at most once per input derivation.
func HashModulo(d *Derivation, resolve Resolver) ([sha256.Size]byte, error) {
	h := &hasher{resolve: resolve, memo: map[string][sha256.Size]byte{}, active: map[string]bool{}}
	return h.modulo(d, false)
}

type hasher struct {
	resolve Resolver
	memo    map[string][sha256.Size]byte
	active  map[string]bool // cycle guard for a hostile resolver
}

func (h *hasher) modulo(d *Derivation, mask bool) ([sha256.Size]byte, error) {
	if d.IsFixedOutput() {
		o := d.Outputs[0]
		return sha256.Sum256([]byte("fixed:out:" + o.HashAlgo + ":" + o.Hash + ":" + o.Path)), nil
	}
	// Replace input paths by modulo hashes. As in Nix, inputs with equal
	// hashes collapse into one entry; the later one's outputs win.
	byHash := make(map[string][]string, len(d.InputDrvs))
	for _, in := range d.InputDrvs {
		sum, err := h.pathModulo(in.Path)
		if err != nil {
			return sum, err
		}
		byHash[hex.EncodeToString(sum[:])] = in.Outputs
	}
	m := *d
	m.InputDrvs = make([]InputDrv, 0, len(byHash))
	for k, outs := range byHash {
		m.InputDrvs = append(m.InputDrvs, InputDrv{Path: k, Outputs: outs})
	}
	sort.Slice(m.InputDrvs, func(i, j int) bool { return m.InputDrvs[i].Path < m.InputDrvs[j].Path })
	var b bytes.Buffer
	b.Grow(d.sizeHint())
	m.write(&b, mask)
	return sha256.Sum256(b.Bytes()), nil
}

func (h *hasher) pathModulo(drvPath string) ([sha256.Size]byte, error) {
	if sum, ok := h.memo[drvPath]; ok {
		return sum, nil
	}
	if h.active[drvPath] {
		return [sha256.Size]byte{}, fmt.Errorf("input derivation %s depends on itself", drvPath)
	}
	if h.resolve == nil {
		return [sha256.Size]byte{}, fmt.Errorf("input derivation %s: no resolver given to read it", drvPath)
	}
	d, err := h.resolve(drvPath)
	if err != nil {
		return [sha256.Size]byte{}, fmt.Errorf("read input derivation %s: %w", drvPath, err)
	}
	h.active[drvPath] = true
	sum, err := h.modulo(d, false)
	delete(h.active, drvPath)
	if err != nil {
		return sum, err
	}
	h.memo[drvPath] = sum
	return sum, nil
}

// ComputeOutputPaths returns the output paths d should have in store dir,
// given its name (see Name). For input-addressed outputs the recorded paths
// are ignored: they are recomputed from the masked ATerm, as nix-instantiate
// and Guix do. Floating content-addressed outputs are not supported.
func (d *Derivation) ComputeOutputPaths(dir storepath.Dir, name string, resolve Resolver) (map[string]string, error) {
	return d.computeOutputPaths(dir, name, resolve, nil)
}

// HashCache remembers the modulo hashes of input derivations across calls, for a caller that
// computes the paths of many derivations over one closure (a generator of synthetic
// distributions): without it each call rehashes the whole closure below the derivation.
type HashCache struct{ memo map[string][sha256.Size]byte }

// NewHashCache returns an empty HashCache. Its entries must stay true: the resolver it is used
// with must always return the same derivation for a path.
func NewHashCache() *HashCache { return &HashCache{memo: map[string][sha256.Size]byte{}} }

func (d *Derivation) computeOutputPaths(dir storepath.Dir, name string, resolve Resolver, cache *HashCache) (map[string]string, error) {
	if d.IsFixedOutput() {
		o := d.Outputs[0]
		raw, err := hex.DecodeString(o.Hash)
		if err != nil {
			return nil, fmt.Errorf("derivation %s: output hash %q: %w", name, o.Hash, err)
		}
		p, err := dir.MakeFixedOutputPath(name, o.HashAlgo, raw)
		if err != nil {
			return nil, fmt.Errorf("derivation %s: %w", name, err)
		}
		return map[string]string{"out": p.String()}, nil
	}
	for _, o := range d.Outputs {
		if o.HashAlgo != "" {
			return nil, fmt.Errorf("derivation %s: output %s is content-addressed (%s), which is not supported; use fixed-output or input-addressed outputs", name, o.Name, o.HashAlgo)
		}
	}
	memo := map[string][sha256.Size]byte{}
	if cache != nil {
		memo = cache.memo
	}
	h := &hasher{resolve: resolve, memo: memo, active: map[string]bool{}}
	sum, err := h.modulo(d, true)
	if err != nil {
		return nil, fmt.Errorf("derivation %s: %w", name, err)
	}
	out := make(map[string]string, len(d.Outputs))
	for _, o := range d.Outputs {
		p, err := dir.MakeOutputPath(sum, o.Name, name)
		if err != nil {
			return nil, fmt.Errorf("derivation %s: output %s: %w", name, o.Name, err)
		}
		out[o.Name] = p.String()
	}
	return out, nil
}

// FillOutputPaths computes d's output paths and writes them into Outputs and
// the matching environment variables (added if missing), then canonicalizes d.
// Synthetic test farms use it to make valid derivations.
func (d *Derivation) FillOutputPaths(dir storepath.Dir, name string, resolve Resolver) error {
	return d.FillOutputPathsCached(dir, name, resolve, nil)
}

// FillOutputPathsCached is FillOutputPaths reusing (and filling) cache's modulo hashes.
func (d *Derivation) FillOutputPathsCached(dir storepath.Dir, name string, resolve Resolver, cache *HashCache) error {
	for _, o := range d.Outputs {
		if _, ok := d.Getenv(o.Name); !ok {
			d.Env = append(d.Env, EnvVar{Key: o.Name})
		}
	}
	d.Canonicalize()
	paths, err := d.computeOutputPaths(dir, name, resolve, cache)
	if err != nil {
		return err
	}
	for i := range d.Outputs {
		d.Outputs[i].Path = paths[d.Outputs[i].Name]
	}
	for i := range d.Env {
		if p, ok := paths[d.Env[i].Key]; ok {
			d.Env[i].Value = p
		}
	}
	return nil
}

// DrvPath returns the store path of d's .drv file in dir, named name+".drv",
// as AddTextToStore computes it with references inputDrvs ∪ inputSrcs.
func (d *Derivation) DrvPath(dir storepath.Dir, name string) (string, error) {
	refs := make([]string, 0, len(d.InputDrvs)+len(d.InputSrcs))
	refs = append(refs, d.InputDerivations()...)
	refs = append(refs, d.InputSrcs...)
	p, err := dir.MakeTextPath(name+storepath.DrvExt, d.Bytes(), refs)
	if err != nil {
		return "", fmt.Errorf("derivation %s: %w", name, err)
	}
	return p.String(), nil
}
