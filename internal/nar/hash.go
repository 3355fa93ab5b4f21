package nar

import (
	"crypto/sha256"
	"hash"
	"io"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// HashingWriter computes a SHA-256 hash and a byte count of what is written
// to it, for NarHash/NarSize and FileHash/FileSize.
type HashingWriter struct {
	h hash.Hash
	n int64
}

// NewHashingWriter returns an empty HashingWriter.
func NewHashingWriter() *HashingWriter { return &HashingWriter{h: sha256.New()} }

// Write never fails.
func (w *HashingWriter) Write(p []byte) (int, error) {
	w.h.Write(p)
	w.n += int64(len(p))
	return len(p), nil
}

// Size is the number of bytes written.
func (w *HashingWriter) Size() int64 { return w.n }

// Sum returns the hash as a narinfo writes it: "sha256:" + 52 nixbase32
// characters.
func (w *HashingWriter) Sum() string { return FormatHash(w.h.Sum(nil)) }

// SumBytes returns the raw 32-byte digest.
func (w *HashingWriter) SumBytes() []byte { return w.h.Sum(nil) }

// FormatHash formats a SHA-256 digest as "sha256:<nixbase32>".
func FormatHash(digest []byte) string { return "sha256:" + nixbase32.EncodeToString(digest) }

// Hash reads r to the end and returns its "sha256:<nixbase32>" hash and size.
func Hash(r io.Reader) (string, int64, error) {
	w := NewHashingWriter()
	_, err := io.Copy(w, r)
	return w.Sum(), w.n, err
}
