package guixpeer

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"sort"
)

// Magic numbers, operation codes and stderr codes from Guix's
// nix/libstore/worker-protocol.hh.
const (
	workerMagic1 = 0x6e697863 // "nixc", client greeting
	workerMagic2 = 0x6478696f // "dxio", daemon reply

	stderrNext  = 0x6f6c6d67 // a log string
	stderrRead  = 0x64617461 // data needed from the client's source
	stderrWrite = 0x64617416 // data for the client's sink
	stderrLast  = 0x616c7473 // work done; the reply follows
	stderrError = 0x63787470 // the operation failed

	// exportMagic separates the NAR from the metadata in an export record
	// (EXPORT_MAGIC in local-store.cc).
	exportMagic = 0x4558494e
)

// Worker operations (enum WorkerOp in worker-protocol.hh).
const (
	wopIsValidPath                 = 1
	wopHasSubstitutes              = 3
	wopQueryPathHash               = 4
	wopQueryReferences             = 5
	wopQueryReferrers              = 6
	wopAddToStore                  = 7
	wopAddTextToStore              = 8
	wopBuildPaths                  = 9
	wopEnsurePath                  = 10
	wopAddTempRoot                 = 11
	wopAddIndirectRoot             = 12
	wopSyncWithGC                  = 13
	wopFindRoots                   = 14
	wopExportPath                  = 16
	wopQueryDeriver                = 18
	wopSetOptions                  = 19
	wopCollectGarbage              = 20
	wopQuerySubstitutablePathInfo  = 21
	wopQueryDerivationOutputs      = 22
	wopQueryAllValidPaths          = 23
	wopQueryFailedPaths            = 24
	wopClearFailedPaths            = 25
	wopQueryPathInfo               = 26
	wopImportPaths                 = 27
	wopQueryDerivationOutputNames  = 28
	wopQueryPathFromHashPart       = 29
	wopQuerySubstitutablePathInfos = 30
	wopQueryValidPaths             = 31
	wopQuerySubstitutablePaths     = 32
	wopQueryValidDerivers          = 33
	wopOptimiseStore               = 34
	wopVerifyStore                 = 35
	wopBuiltinBuilders             = 80 // protocol 0x160 and later
	wopSubstituteURLs              = 81 // protocol 0x164 and later
)

// daemonError is a Guix Error (nix/libutil/types.hh): a message plus the
// status guix-daemon reports with it, 1 unless the thrower chose another
// (Worker::exitStatus gives 100 for a permanent build failure, 101 for a
// timeout). Every other error the peer meets is an I/O error on the
// connection.
type daemonError struct {
	msg    string
	status uint64
}

func (e *daemonError) Error() string { return e.msg }

// errorf makes a daemonError with Guix's default status 1.
func errorf(format string, args ...any) error {
	return &daemonError{msg: fmt.Sprintf(format, args...), status: 1}
}

// decoder reads the protocol's integers and strings the way Guix's
// nix/libutil/serialise.cc does, consuming exactly the bytes it decodes.
type decoder struct {
	r io.Reader
	b [8]byte
}

func (d *decoder) full(p []byte) error {
	_, err := io.ReadFull(d.r, p)
	return err
}

// longLong is readLongLong: a full u64.
func (d *decoder) longLong() (uint64, error) {
	if err := d.full(d.b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(d.b[:]), nil
}

// int is readInt: a u64 whose upper half must be zero, because Guix stores
// it in an unsigned int.
func (d *decoder) int() (uint64, error) {
	v, err := d.longLong()
	if err != nil {
		return 0, err
	}
	if v>>32 != 0 {
		return 0, errorf("implementation cannot deal with > 32-bit integers")
	}
	return v, nil
}

// padding is readPadding: the zero bytes after a string of length n.
func (d *decoder) padding(n uint64) error {
	if n%8 == 0 {
		return nil
	}
	p := d.b[:8-n%8]
	if err := d.full(p); err != nil {
		return err
	}
	for _, c := range p {
		if c != 0 {
			return errorf("non-zero padding")
		}
	}
	return nil
}

// bytes is readString. The buffer grows as data arrives, so a bogus length
// costs memory only for bytes actually sent.
func (d *decoder) bytes() ([]byte, error) {
	n, err := d.int()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if m, err := io.CopyN(&buf, d.r, int64(n)); err != nil {
		if err == io.EOF && m < int64(n) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if err := d.padding(n); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (d *decoder) string() (string, error) {
	b, err := d.bytes()
	return string(b), err
}

// stringList is readStrings<Paths>: a count and strings, in order.
func (d *decoder) stringList() ([]string, error) {
	n, err := d.int()
	if err != nil {
		return nil, err
	}
	var out []string
	for i := uint64(0); i < n; i++ {
		s, err := d.string()
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// stringSet is readStrings<PathSet>: the strings land in a std::set, so the
// daemon sees them sorted and without duplicates.
func (d *decoder) stringSet() ([]string, error) {
	ss, err := d.stringList()
	if err != nil {
		return nil, err
	}
	return sortedSet(ss), nil
}

// storePath is readStorePath: a string that must name a store path.
func (d *decoder) storePath() (string, error) {
	s, err := d.string()
	if err != nil {
		return "", err
	}
	return s, assertStorePath(s)
}

// storePaths is readStorePaths<PathSet>.
func (d *decoder) storePaths() ([]string, error) {
	ss, err := d.stringSet()
	if err != nil {
		return nil, err
	}
	for _, s := range ss {
		if err := assertStorePath(s); err != nil {
			return nil, err
		}
	}
	return ss, nil
}

// encoder writes the protocol's integers and strings (serialise.cc
// writeInt, writeLongLong, writeString, writeStrings). Errors stick in the
// bufio.Writer and surface at Flush.
type encoder struct{ w *bufio.Writer }

var zeros [8]byte

func (e encoder) int(v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	e.w.Write(b[:])
}

func (e encoder) bool(v bool) {
	if v {
		e.int(1)
	} else {
		e.int(0)
	}
}

func (e encoder) bytes(b []byte) {
	e.int(uint64(len(b)))
	e.w.Write(b)
	if n := len(b) % 8; n != 0 {
		e.w.Write(zeros[:8-n])
	}
}

func (e encoder) string(s string) { e.bytes([]byte(s)) }

func (e encoder) strings(ss []string) {
	e.int(uint64(len(ss)))
	for _, s := range ss {
		e.string(s)
	}
}

// sortedSet returns ss sorted without duplicates, like a std::set<string>.
func sortedSet(ss []string) []string {
	out := append([]string(nil), ss...)
	sort.Strings(out)
	j := 0
	for i, s := range out {
		if i > 0 && s == out[j-1] {
			continue
		}
		out[j] = s
		j++
	}
	return out[:j]
}

// appendString serialises s as writeString does, for building records.
func appendString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
	b = append(b, s...)
	if n := len(s) % 8; n != 0 {
		b = append(b, zeros[:8-n]...)
	}
	return b
}
