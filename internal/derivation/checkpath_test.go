package derivation

import (
	"bytes"
	"strings"
	"testing"

	"github.com/guixfarm/guix-farm/internal/storepath"
)

// TestCheckPath: every real .drv (made by nix-instantiate) is the content of its path; a byte
// changed, or the content of another .drv, is not.
func TestCheckPath(t *testing.T) {
	all := loadTestdata(t)
	var other []byte
	for drvPath, r := range all {
		if err := CheckPath(storepath.DefaultDir, drvPath, r.data); err != nil {
			t.Errorf("%s: %v", r.file, err)
		}
		forged := bytes.Replace(r.data, []byte("x86_64-linux"), []byte("i686-linux"), 1)
		if bytes.Equal(forged, r.data) {
			t.Fatalf("%s: nothing to change", r.file)
		}
		if err := CheckPath(storepath.DefaultDir, drvPath, forged); err == nil || !strings.Contains(err.Error(), "not that derivation") {
			t.Errorf("%s changed: %v, want a refusal", r.file, err)
		}
		if other != nil && !bytes.Equal(other, r.data) {
			if err := CheckPath(storepath.DefaultDir, drvPath, other); err == nil {
				t.Errorf("%s: another .drv's content accepted", r.file)
			}
		}
		other = r.data
	}
	if err := CheckPath(storepath.DefaultDir, "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv", []byte("not a derivation")); err == nil {
		t.Error("unparsable content accepted")
	}
}
