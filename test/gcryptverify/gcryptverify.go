// Package gcryptverify builds and runs a tiny C program that checks and
// makes Guix signatures with libgcrypt, exactly as Guix does, so tests can
// hold the Go implementation against the real library. Test use only.
package gcryptverify

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

//go:embed csrc/gcryptverify.c
var source []byte

// Tool is the compiled helper.
type Tool struct {
	bin string
	dir string
}

// Exit codes of "verify", as errors.
var (
	ErrBadSignature  = errors.New("libgcrypt: bad signature")
	ErrHashMismatch  = errors.New("libgcrypt: hash mismatch")
	ErrCorrupt       = errors.New("libgcrypt: corrupt signature")
	ErrUnauthorized  = errors.New("libgcrypt: signed by another key")
	errToolFailure   = errors.New("libgcrypt helper failed")
	requireTestbedEV = "GUIXFARM_REQUIRE_TESTBED"
)

// Build compiles the helper into t.TempDir(). Without gcc or libgcrypt's
// headers it skips the test, or fails it when GUIXFARM_REQUIRE_TESTBED=1.
func Build(t testing.TB) *Tool {
	t.Helper()
	missing := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...) + "; install it with `hack/tools.sh nix` (Debian gcc + libgcrypt20-dev)"
		if os.Getenv(requireTestbedEV) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		missing("gcc not found")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "gcryptverify.c")
	if err := os.WriteFile(src, source, 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "gcryptverify")
	out, err := exec.Command(gcc, "-O2", "-Wall", "-o", bin, src, "-lgcrypt").CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("gcrypt.h")) || bytes.Contains(out, []byte("-lgcrypt")) {
			missing("libgcrypt development files missing: %s", bytes.TrimSpace(out))
		}
		t.Fatalf("compile gcryptverify: %v\n%s", err, out)
	}
	return &Tool{bin: bin, dir: dir}
}

func (g *Tool) write(name string, data []byte) (string, error) {
	f, err := os.CreateTemp(g.dir, name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return "", err
	}
	return f.Name(), f.Close()
}

func (g *Tool) run(args ...string) ([]byte, int, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(g.bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return stdout.Bytes(), exit.ExitCode(), fmt.Errorf("%s", bytes.TrimSpace(stderr.Bytes()))
	}
	if err != nil {
		return nil, -1, err
	}
	return stdout.Bytes(), 0, nil
}

// Verify checks a signature sexp over body with libgcrypt; with pub (a
// public-key sexp) non-nil, the signature's key must be that key.
func (g *Tool) Verify(sig, body, pub []byte) error {
	sf, err := g.write("sig", sig)
	if err != nil {
		return err
	}
	bf, err := g.write("body", body)
	if err != nil {
		return err
	}
	args := []string{"verify", sf, bf}
	if pub != nil {
		pf, err := g.write("pub", pub)
		if err != nil {
			return err
		}
		args = append(args, pf)
	}
	_, code, err := g.run(args...)
	switch code {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("%w: %v", ErrBadSignature, err)
	case 2:
		return fmt.Errorf("%w: %v", ErrHashMismatch, err)
	case 3:
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	case 4:
		return fmt.Errorf("%w: %v", ErrUnauthorized, err)
	}
	return fmt.Errorf("%w: %v", errToolFailure, err)
}

// Sign signs SHA-256(body) with a private-key sexp (signing-key.sec) and
// returns the signature sexp libgcrypt prints (advanced form), as
// guix publish would put it in a narinfo.
func (g *Tool) Sign(secretKey, body []byte) ([]byte, error) {
	kf, err := g.write("key", secretKey)
	if err != nil {
		return nil, err
	}
	bf, err := g.write("body", body)
	if err != nil {
		return nil, err
	}
	out, code, err := g.run("sign", kf, bf)
	if code != 0 {
		return nil, fmt.Errorf("%w: sign: %v", errToolFailure, err)
	}
	return out, nil
}

// GenKey returns a fresh libgcrypt key pair as
// (key-data (public-key ...) (private-key ...)), like guix archive --generate-key.
func (g *Tool) GenKey() ([]byte, error) {
	out, code, err := g.run("genkey")
	if code != 0 {
		return nil, fmt.Errorf("%w: genkey: %v", errToolFailure, err)
	}
	return out, nil
}
