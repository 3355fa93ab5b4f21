// Package keygen is the "keygen" subcommand of guix-farm-controller: it
// makes the farm's narinfo signing keys, a Nix and a Guix key pair, as
// files named like the entries of the signing Secret that
// signing.KeysFromSecretData reads, and prints how to create that Secret.
package keygen

import (
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/guixfarm/guix-farm/internal/signing"
)

// Options say what Generate makes.
type Options struct {
	// Name of the Nix key, what clients list in trusted-public-keys, by
	// convention <host>-<n> (e.g. cache.example.org-1).
	Name string
	// Host, when set, is written as the signing-host entry (the host
	// named in Guix "Signature: 1;<host>;…" fields).
	Host string
	// Dir receives the files; created (0700) if missing.
	Dir string
	// Rand is the randomness (default crypto/rand.Reader).
	Rand io.Reader
}

// Result names what Generate wrote.
type Result struct {
	// Files maps each Secret entry (signing.SecretData*) to its file.
	Files      map[string]string
	NixPublic  signing.NixPublicKey
	GuixPublic signing.GuixPublicKey
}

// Generate makes a Nix and a Guix key pair and writes them into o.Dir as
// nix-secret-key, nix-public-key, guix-signing-key.sec and
// guix-signing-key.pub (and signing-host with o.Host). It never replaces
// a file: keys already handed to clients must not be lost by a second run.
func Generate(o Options) (Result, error) {
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.Dir == "" {
		return Result{}, errors.New("keygen: no output directory; give --out DIR")
	}
	nk, err := signing.GenerateNixKey(o.Rand, o.Name)
	if err != nil {
		return Result{}, fmt.Errorf("keygen: %w", err)
	}
	gk, err := signing.GenerateGuixKey(o.Rand)
	if err != nil {
		return Result{}, fmt.Errorf("keygen: %w", err)
	}
	if strings.ContainsAny(o.Host, ";\n") {
		return Result{}, fmt.Errorf("keygen: host %q must not contain ';' or newlines (it goes into Guix's Signature: 1;<host>;… field)", o.Host)
	}
	// Written as nix-store and guix archive write them, without a
	// trailing newline.
	files := []keyFile{
		{signing.SecretDataNixKey, []byte(nk.Text()), 0o600},
		{signing.SecretDataNixPublicKey, []byte(nk.Public().String()), 0o644},
		{signing.SecretDataGuixKey, gk.Text(), 0o600},
		{signing.SecretDataGuixPublicKey, []byte(gk.Public().String()), 0o644},
	}
	if o.Host != "" {
		files = append(files, keyFile{signing.SecretDataHost, []byte(o.Host), 0o644})
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return Result{}, fmt.Errorf("keygen: %w", err)
	}
	res := Result{Files: map[string]string{}, NixPublic: nk.Public(), GuixPublic: gk.Public()}
	for _, f := range files {
		p := filepath.Join(o.Dir, f.entry)
		if err := writeNew(p, f.data, f.mode); err != nil {
			for _, done := range res.Files { // all or nothing
				os.Remove(done)
			}
			return Result{}, fmt.Errorf("keygen: %w", err)
		}
		res.Files[f.entry] = p
	}
	return res, nil
}

// keyFile is one file Generate writes, named after its Secret entry.
type keyFile struct {
	entry string
	data  []byte
	mode  fs.FileMode
}

// writeNew creates p with data, failing if it exists.
func writeNew(p string, data []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists; not replacing a key (choose another --out directory, or remove it if it was never used)", p)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(p)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(p)
		return err
	}
	return nil
}

// Command runs "keygen" with args (the words after "keygen") and prints
// the public keys and the kubectl command that makes the Secret. It
// returns flag.ErrHelp for -h.
//
//	guix-farm-controller keygen --name cache.example.org-1 --out ./farm-keys
func Command(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.SetOutput(stdout)
	var (
		o         Options
		secret    = fs.String("secret", "guix-farm-signing", "name of the Kubernetes Secret in the printed command")
		namespace = fs.String("namespace", "guix-farm", "namespace of the Secret in the printed command")
	)
	fs.StringVar(&o.Name, "name", "", "name of the Nix key, listed by clients in trusted-public-keys, e.g. cache.example.org-1 (required)")
	fs.StringVar(&o.Dir, "out", "", "directory to write the key files into; existing files are never replaced (required)")
	fs.StringVar(&o.Host, "host", "", "host named in Guix signatures (optional; written as signing-host)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("keygen: unexpected arguments %q", fs.Args())
	}
	if o.Name == "" || o.Dir == "" {
		return errors.New("keygen: --name and --out are required, e.g. --name cache.example.org-1 --out ./farm-keys")
	}
	res, err := Generate(o)
	if err != nil {
		return err
	}
	printResult(stdout, res, *secret, *namespace)
	return nil
}

func printResult(w io.Writer, res Result, secret, namespace string) {
	fmt.Fprintf(w, "Wrote the farm's signing keys into %s.\n\n", filepath.Dir(res.Files[signing.SecretDataNixKey]))
	fmt.Fprintf(w, "Nix clients, in nix.conf:\n  trusted-public-keys = %s\n\n", res.NixPublic)
	fmt.Fprintf(w, "Guix clients: guix archive --authorize < %s\n%s\n\n", shellQuote(res.Files[signing.SecretDataGuixPublicKey]), strings.TrimSpace(res.GuixPublic.String()))
	fmt.Fprintf(w, "The Secret the farm signs with:\n  kubectl -n %s create secret generic %s", namespace, secret)
	for _, entry := range []string{signing.SecretDataNixKey, signing.SecretDataGuixKey, signing.SecretDataHost, signing.SecretDataNixPublicKey, signing.SecretDataGuixPublicKey} {
		if p, ok := res.Files[entry]; ok {
			fmt.Fprintf(w, " \\\n    --from-file=%s", shellQuote(entry+"="+p))
		}
	}
	fmt.Fprintln(w)
}

// shellQuote quotes s for a POSIX shell when it holds anything but safe
// characters, so the printed command can be pasted.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./_-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
