package signing

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func writeFiles(t *testing.T, files map[string]string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	paths := map[string]string{}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		paths[name] = p
	}
	return paths
}

func TestLoadKeysFromFiles(t *testing.T) {
	guixSec := string(g2Key(t).Text())
	guixPub := g2Key(t).Public().String()
	p := writeFiles(t, map[string]string{
		"signing-key.sec": guixSec,
		"signing-key.pub": guixPub,
		"nix.sec":         n3Secret + "\n",
		"nix2.sec":        n2Secret + "\n" + n3Secret + "\n",
		"nix.pub":         n3Public + "\n",
		"empty":           "\n",
		"dup-names":       n3Secret + "\n" + n3Secret + "\n",
	})

	k, err := LoadKeysFromFiles(p["signing-key.sec"], p["nix.sec"])
	if err != nil {
		t.Fatal(err)
	}
	if k.Guix == nil || k.Guix.Public() != g2Key(t).Public() || len(k.Nix) != 1 || k.Nix[0].Name != "farm-test-1" || k.Host != DefaultHost {
		t.Errorf("keys = %+v", k)
	}
	if k, err := LoadKeysFromFiles(p["nix2.sec"]); err != nil || len(k.Nix) != 2 || k.Guix != nil {
		t.Errorf("two Nix keys in one file: %+v, %v", k, err)
	}

	cases := map[string]struct {
		paths []string
		want  string
	}{
		"none":           {nil, "no key files"},
		"guix public":    {[]string{p["signing-key.pub"]}, "holds a Guix public key; the farm needs the secret key signing-key.sec"},
		"nix public":     {[]string{p["nix.pub"]}, "holds a Nix public key"},
		"two guix keys":  {[]string{p["signing-key.sec"], p["signing-key.sec"]}, "a second Guix key"},
		"empty":          {[]string{p["empty"]}, "is empty"},
		"missing":        {[]string{filepath.Join(t.TempDir(), "nope")}, "no such file"},
		"same key names": {[]string{p["dup-names"]}, "two Nix keys named"},
	}
	for name, c := range cases {
		_, err := LoadKeysFromFiles(c.paths...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, c.want)
		}
		if err != nil && len(c.paths) > 0 && !strings.Contains(err.Error(), c.paths[0]) {
			t.Errorf("%s: error does not name the file: %v", name, err)
		}
	}
}

func TestKeysFromSecretData(t *testing.T) {
	guixSec := g2Key(t).Text()
	k, err := KeysFromSecretData(map[string][]byte{
		SecretDataGuixKey:         guixSec,
		SecretDataNixKey:          []byte(n3Secret),
		SecretDataNixKey + "-old": []byte(n2Secret),
		SecretDataHost:            []byte(" cache.example.org\n"),
		SecretDataGuixPublicKey:   []byte(g2Key(t).Public().String()),
		SecretDataNixPublicKey:    []byte(n3Public),
	})
	if err != nil {
		t.Fatal(err)
	}
	if k.Guix == nil || len(k.Nix) != 2 || k.Host != "cache.example.org" {
		t.Errorf("keys = %+v", k)
	}

	cases := map[string]struct {
		data map[string][]byte
		want string
	}{
		"empty":           {map[string][]byte{}, "no keys found"},
		"unknown entry":   {map[string][]byte{"nix-secret.key": []byte(n3Secret)}, `unknown secret entry "nix-secret.key"`},
		"guix under nix":  {map[string][]byte{SecretDataNixKey: guixSec}, "holds a Guix key; put it under guix-signing-key.sec"},
		"nix under guix":  {map[string][]byte{SecretDataGuixKey: []byte(n3Secret)}, "must be Guix's /etc/guix/signing-key.sec"},
		"public for guix": {map[string][]byte{SecretDataGuixKey: []byte(g2Key(t).Public().String())}, "secret entry guix-signing-key.sec holds a Guix public key"},
		"public for nix":  {map[string][]byte{SecretDataNixKey: []byte(n3Public)}, "secret entry nix-secret-key line 1 holds a Nix public key"},
		"bad host":        {map[string][]byte{SecretDataNixKey: []byte(n3Secret), SecretDataHost: []byte("a;b")}, "must not contain"},
	}
	for name, c := range cases {
		_, err := KeysFromSecretData(c.data)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, c.want)
		}
	}
}

// nixCommand returns a command of the real nix (Debian's Nix 2.8) that
// touches no daemon or store, or skips the test without nix.
func nixCommand(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("GUIXFARM_REQUIRE_TESTBED") == "1" {
			t.Fatalf("%s not found; install it with `hack/tools.sh nix`", name)
		}
		t.Skipf("%s not found; install it with `hack/tools.sh nix`", name)
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"HOME=" + dir, "NIX_STATE_DIR=" + dir, "PATH=" + os.Getenv("PATH")}
	return cmd
}

// TestNixStoreGeneratedKey loads a key pair made by the real nix-store.
func TestNixStoreGeneratedKey(t *testing.T) {
	dir := t.TempDir()
	sk, pk := filepath.Join(dir, "sk"), filepath.Join(dir, "pk")
	cmd := nixCommand(t, "nix-store", "--generate-binary-cache-key", "farm-1", sk, pk)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nix-store --generate-binary-cache-key: %v\n%s", err, out)
	}
	k, err := LoadKeysFromFiles(sk)
	if err != nil {
		t.Fatal(err)
	}
	pubText, _ := os.ReadFile(pk)
	pub, err := ParseNixPublicKey(string(pubText))
	if err != nil {
		t.Fatal(err)
	}
	if k.Nix[0].Public().String() != pub.String() {
		t.Errorf("secret key's public half %s, nix wrote %s", k.Nix[0].Public(), pub)
	}
	if _, err := LoadKeysFromFiles(pk); err == nil || !strings.Contains(err.Error(), "Nix public key") {
		t.Errorf("loading the public key file: %v", err)
	}
}

// TestGenerateNixKeyUnderNix: keys from GenerateNixKey have the shape of
// nix-store's, and the real nix derives the same public key from ours.
func TestGenerateNixKeyUnderNix(t *testing.T) {
	k, err := GenerateNixKey(rand.Reader, "farm-1")
	if err != nil {
		t.Fatal(err)
	}
	cmd := nixCommand(t, "nix", "--extra-experimental-features", "nix-command", "key", "convert-secret-to-public")
	cmd.Stdin = strings.NewReader(k.Text())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix key convert-secret-to-public: %v", err)
	}
	if string(out) != k.Public().String() {
		t.Errorf("nix derives public key %q from our secret key, we %q", out, k.Public())
	}

	dir := t.TempDir()
	sk, pk := filepath.Join(dir, "sk"), filepath.Join(dir, "pk")
	if out, err := nixCommand(t, "nix-store", "--generate-binary-cache-key", "farm-1", sk, pk).CombinedOutput(); err != nil {
		t.Fatalf("nix-store --generate-binary-cache-key: %v\n%s", err, out)
	}
	nixSecret, _ := os.ReadFile(sk)
	nixPublic, _ := os.ReadFile(pk)
	if len(nixSecret) != len(k.Text()) || len(nixPublic) != len(k.Public().String()) {
		t.Errorf("nix-store writes keys of %d / %d characters, we %d / %d", len(nixSecret), len(nixPublic), len(k.Text()), len(k.Public().String()))
	}
}
