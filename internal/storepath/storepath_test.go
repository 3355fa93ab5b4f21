package storepath

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

const demoDrv = "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv"

func TestParse(t *testing.T) {
	cases := map[string]struct {
		dir     Dir
		in      string
		want    Path
		wantErr string
	}{
		"drv": {
			dir: DefaultDir, in: demoDrv,
			want: Path{Dir: DefaultDir, Hash: "5mr3q377sm4i7kmy0s0gai2dxxq0lkhh", Name: "demo.drv"},
		},
		"nix store": {
			dir: "/nix/store", in: "/nix/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-a+b-1.0_x?y=z",
			want: Path{Dir: "/nix/store", Hash: "5mr3q377sm4i7kmy0s0gai2dxxq0lkhh", Name: "a+b-1.0_x?y=z"},
		},
		"other dir":       {dir: DefaultDir, in: "/nix/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo", wantErr: "not in store directory /gnu/store"},
		"letter e":        {dir: DefaultDir, in: "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhe-demo", wantErr: "outside the nix-base32 alphabet"},
		"upper case hash": {dir: DefaultDir, in: "/gnu/store/5MR3Q377SM4I7KMY0S0GAI2DXXQ0LKHH-demo", wantErr: "outside the nix-base32 alphabet"},
		"short hash":      {dir: DefaultDir, in: "/gnu/store/5mr3q377-demo", wantErr: "is not <32 nix-base32 chars>-<name>"},
		"no name":         {dir: DefaultDir, in: "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-", wantErr: "is not <32 nix-base32 chars>-<name>"},
		"leading dot":     {dir: DefaultDir, in: "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-.drv", wantErr: "starts with '.'"},
		"slash in name":   {dir: DefaultDir, in: "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-a/bin/sh", wantErr: `has '/'`},
		"space in name":   {dir: DefaultDir, in: "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-a b", wantErr: `has ' '`},
		"too long":        {dir: DefaultDir, in: "/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-" + strings.Repeat("a", 212), wantErr: "the limit is 211"},
		"bad dir":         {dir: "gnu/store/", in: demoDrv, wantErr: "not absolute"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := tc.dir.Parse(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want it to contain %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Parse(%q) (-want +got):\n%s", tc.in, diff)
			}
			if got.String() != tc.in {
				t.Errorf("String() = %q, want %q", got.String(), tc.in)
			}
		})
	}
}

func TestErrorShowsShape(t *testing.T) {
	_, err := DefaultDir.Parse("/gnu/store/nope")
	if err == nil || !strings.Contains(err.Error(), "expected /gnu/store/<32 nix-base32 chars>-<name>") {
		t.Fatalf("error %v does not show the expected shape", err)
	}
}

func TestParseAnyAndDerivation(t *testing.T) {
	p, err := ParseAny(demoDrv)
	if err != nil || p.Dir != DefaultDir || !p.IsDerivation() || p.Base() != "5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv" {
		t.Fatalf("ParseAny = %+v, %v", p, err)
	}
	if _, err := ParseAny("5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo"); err == nil {
		t.Error("ParseAny accepted a relative path")
	}
	if !DefaultDir.IsDerivation(demoDrv) || DefaultDir.IsDerivation(strings.TrimSuffix(demoDrv, ".drv")) {
		t.Error("IsDerivation wrong")
	}
	if _, err := DefaultDir.ParseDerivation(strings.TrimSuffix(demoDrv, ".drv")); err == nil {
		t.Error("ParseDerivation accepted a non-.drv path")
	}
}

func TestDerivationPattern(t *testing.T) {
	if got := DefaultDir.DerivationPattern(); got != DerivationPattern {
		t.Fatalf("DefaultDir.DerivationPattern() = %q, want the constant %q", got, DerivationPattern)
	}
	want := `^/gnu/store/[0123456789abcdfghijklmnpqrsvwxyz]{32}-[A-Za-z0-9+._?=-]+\.drv$`
	if DerivationPattern != want {
		t.Fatalf("DerivationPattern = %q, want %q", DerivationPattern, want)
	}
	re := regexp.MustCompile(Dir("/var/x.y/store").DerivationPattern())
	if !re.MatchString("/var/x.y/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv") || re.MatchString("/var/xxy/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo.drv") {
		t.Error("DerivationPattern does not quote the store dir")
	}
	if !regexp.MustCompile(DefaultDir.Pattern()).MatchString("/gnu/store/5mr3q377sm4i7kmy0s0gai2dxxq0lkhh-demo") {
		t.Error("Pattern does not match a plain store path")
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Vectors from protocols.md §6, produced by nix 2.8 with NIX_STORE_DIR=/gnu/store.
func TestMakePaths(t *testing.T) {
	narHello, err := nixbase32.DecodeString("04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw")
	if err != nil {
		t.Fatal(err)
	}
	fodHash := mustHex(t, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
	cases := map[string]struct {
		make func() (Path, error)
		want string
	}{
		"text probe.txt": {
			make: func() (Path, error) { return DefaultDir.MakeTextPath("probe.txt", []byte("hello\n"), nil) },
			want: "/gnu/store/sgmxv4mxgx3psb5w9sp16qi9k56qpabn-probe.txt",
		},
		"source hello.txt": {
			make: func() (Path, error) {
				return DefaultDir.MakeSourcePath("hello.txt", [32]byte(narHello), nil, false)
			},
			want: "/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt",
		},
		"fixed flat fod": {
			make: func() (Path, error) { return DefaultDir.MakeFixedOutputPath("fod", "sha256", fodHash) },
			want: "/gnu/store/gqwqh59plvz5abnmighnp13z1ckv8p07-fod",
		},
		"fixed recursive = source": {
			make: func() (Path, error) { return DefaultDir.MakeFixedOutputPath("hello.txt", "r:sha256", narHello) },
			want: "/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := tc.make()
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestMakeErrors(t *testing.T) {
	cases := map[string]func() error{
		"bad algo":   func() error { _, err := DefaultDir.MakeFixedOutputPath("x", "sha3", make([]byte, 32)); return err },
		"bad length": func() error { _, err := DefaultDir.MakeFixedOutputPath("x", "sha256", make([]byte, 20)); return err },
		"bad name":   func() error { _, err := DefaultDir.MakeTextPath(".x", nil, nil); return err },
		"bad dir":    func() error { _, err := Dir("/gnu/store/").MakeTextPath("x", nil, nil); return err },
	}
	for name, f := range cases {
		if f() == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestMakeOutputPathName(t *testing.T) {
	h := sha256.Sum256([]byte("x"))
	out, _ := DefaultDir.MakeOutputPath(h, "out", "dep")
	lib, _ := DefaultDir.MakeOutputPath(h, "lib", "dep")
	if out.Name != "dep" || lib.Name != "dep-lib" || out.Hash == lib.Hash {
		t.Errorf("out=%s lib=%s", out, lib)
	}
}
