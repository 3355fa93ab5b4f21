package derivation

import (
	"fmt"

	"github.com/guixfarm/guix-farm/internal/storepath"
)

// CheckPath checks that data is the .drv at drvPath in dir: a .drv is stored as text
// (storepath.MakeTextPath), its path made from the SHA-256 of its bytes, its name and its
// references (its input derivations and input sources). Bytes fetched from elsewhere (the bucket)
// that do not hash to their path are another derivation, whatever a signature says.
func CheckPath(dir storepath.Dir, drvPath string, data []byte) error {
	p, err := dir.ParseDerivation(drvPath)
	if err != nil {
		return err
	}
	d, err := Parse(data)
	if err != nil {
		return fmt.Errorf("%s: %w", drvPath, err)
	}
	refs := make([]string, 0, len(d.InputDrvs)+len(d.InputSrcs))
	refs = append(refs, d.InputDerivations()...)
	refs = append(refs, d.InputSrcs...)
	want, err := dir.MakeTextPath(p.Name, data, refs)
	if err != nil {
		return fmt.Errorf("%s: %w", drvPath, err)
	}
	if want.String() != drvPath {
		return fmt.Errorf("the content read for %s hashes to %s: it is not that derivation (corrupt or forged)", drvPath, want)
	}
	return nil
}
