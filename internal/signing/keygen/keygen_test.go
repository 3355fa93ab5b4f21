package keygen

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guixfarm/guix-farm/internal/narinfo"
	"github.com/guixfarm/guix-farm/internal/signing"
	"github.com/guixfarm/guix-farm/test/testbed"
)

// readDir returns the files of dir as Secret data.
func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := map[string][]byte{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		data[e.Name()] = b
	}
	return data
}

// checkKeys loads the Secret data as the farm does, signs a narinfo with
// it, and verifies both signatures with the public key files.
func checkKeys(t *testing.T, data map[string][]byte, name, host string) {
	t.Helper()
	keys, err := signing.KeysFromSecretData(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys.Nix) != 1 || keys.Nix[0].Name != name || keys.Guix == nil || keys.Host != host {
		t.Fatalf("keys %+v", keys)
	}
	nixPub, err := signing.ParseNixPublicKey(string(data[signing.SecretDataNixPublicKey]))
	if err != nil {
		t.Fatal(err)
	}
	guixPub, err := signing.ParseGuixPublicKey(data[signing.SecretDataGuixPublicKey])
	if err != nil {
		t.Fatal(err)
	}
	ni := &narinfo.NarInfo{
		StorePath: "/gnu/store/mai503rgk7jq72577x5iwgyc5izfvp9i-hello.txt", URL: "nar/zstd/x.nar.zst", Compression: "zstd",
		NarHash: "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw", NarSize: 120,
	}
	if err := ni.Sign(keys); err != nil {
		t.Fatal(err)
	}
	if err := ni.Verify([]signing.NixPublicKey{nixPub}, []signing.GuixPublicKey{guixPub}); err != nil {
		t.Errorf("narinfo signed with the generated keys: %v\n%s", err, ni.Bytes())
	}
}

func TestGenerate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	res, err := Generate(Options{Name: "cache.example.org-1", Host: "cache.example.org", Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	data := readDir(t, dir)
	if len(data) != 5 {
		t.Errorf("files %v", res.Files)
	}
	checkKeys(t, data, "cache.example.org-1", "cache.example.org")
	if string(data[signing.SecretDataNixPublicKey]) != res.NixPublic.String() || string(data[signing.SecretDataGuixPublicKey]) != res.GuixPublic.String() {
		t.Error("Result's public keys differ from the files")
	}
	// The secret halves alone, as files (Config.KeyFiles).
	if _, err := signing.LoadKeysFromFiles(res.Files[signing.SecretDataNixKey], res.Files[signing.SecretDataGuixKey]); err != nil {
		t.Error(err)
	}
	for entry, p := range res.Files {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		secret := entry == signing.SecretDataNixKey || entry == signing.SecretDataGuixKey
		if secret && fi.Mode().Perm() != 0o600 || !secret && fi.Mode().Perm() != 0o644 {
			t.Errorf("%s has mode %v", p, fi.Mode())
		}
	}

	// A second run never replaces keys.
	if _, err := Generate(Options{Name: "other-1", Dir: dir}); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("second run into the same directory: %v", err)
	}
	if d := readDir(t, dir); !bytes.Equal(d[signing.SecretDataNixKey], data[signing.SecretDataNixKey]) {
		t.Error("the secret key was replaced")
	}
	// A half-written directory is cleaned up: only the existing file stays.
	partial := t.TempDir()
	os.WriteFile(filepath.Join(partial, signing.SecretDataGuixKey), []byte("keep"), 0o600)
	if _, err := Generate(Options{Name: "x-1", Dir: partial}); err == nil {
		t.Error("no error with an existing guix-signing-key.sec")
	}
	if d := readDir(t, partial); len(d) != 1 || string(d[signing.SecretDataGuixKey]) != "keep" {
		t.Errorf("after a failed run: %v", d)
	}
	for name, o := range map[string]Options{
		"bad name": {Name: "a b", Dir: t.TempDir()},
		"no dir":   {Name: "x-1"},
		"bad host": {Name: "x-1", Host: "a;b", Dir: t.TempDir()},
	} {
		if _, err := Generate(o); err == nil {
			t.Errorf("%s: no error", name)
		} else if o.Dir != "" {
			if d := readDir(t, o.Dir); len(d) != 0 {
				t.Errorf("%s: wrote %v", name, d)
			}
		}
	}
}

// TestCommand runs the subcommand, then the kubectl command it prints
// (client-side dry run): the Secret it makes holds keys the farm loads.
func TestCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "farm keys") // a path the shell must quote
	var out bytes.Buffer
	if err := Command([]string{"--name", "farm-1", "--out", dir}, &out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	t.Log(text)
	pub, _ := os.ReadFile(filepath.Join(dir, signing.SecretDataNixPublicKey))
	for _, want := range []string{"trusted-public-keys = " + string(pub), "(public-key", "guix archive --authorize", "kubectl -n guix-farm create secret generic guix-farm-signing"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	var buf bytes.Buffer
	if err := Command([]string{"--out", dir}, &buf); err == nil || !strings.Contains(err.Error(), "--name") {
		t.Errorf("without --name: %v", err)
	}
	if err := Command([]string{"-h"}, &buf); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}

	kubectl := testbed.Tool(t, "kubectl", "kube")
	i := strings.Index(text, "kubectl -n")
	cmdline := strings.TrimSpace(strings.ReplaceAll(text[i:], "\\\n", " "))
	cmdline = strings.Replace(cmdline, "kubectl", kubectl, 1) + " --dry-run=client -o json"
	cmd := exec.Command("sh", "-c", cmdline)
	cmd.Env = append(os.Environ(), "KUBECONFIG=/dev/null")
	js, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		errors.As(err, &ee)
		t.Fatalf("%s: %v\n%s", cmdline, err, ee.Stderr)
	}
	var secret struct {
		Data map[string][]byte `json:"data"`
	}
	if err := json.Unmarshal(js, &secret); err != nil {
		t.Fatal(err)
	}
	if len(secret.Data) != 4 {
		t.Errorf("Secret entries %v", secret.Data)
	}
	checkKeys(t, secret.Data, "farm-1", signing.DefaultHost)
}
