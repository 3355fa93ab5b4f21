package guixpeer

import (
	"crypto/sha256"
	"encoding/binary"
	"io"

	"github.com/guixfarm/guix-farm/internal/sexp"
)

// Tunnel buffer sizes: TunnelSink is a BufferedSink(64 * 1024), and
// TunnelSource a BufferedSource with the default 32 * 1024, which is the
// length every STDERR_READ asks for.
const (
	tunnelSinkSize   = 64 << 10
	tunnelSourceSize = 32 << 10
)

// signingKeyMissing is the SysError checkSecrecy raises when
// /etc/guix/signing-key.sec does not exist.
const signingKeyMissing = "getting status of `/etc/guix/signing-key.sec': No such file or directory"

// exportPath is LocalStore::exportPath writing into a TunnelSink: the export
// record (NAR, EXPORT_MAGIC, path, references, deriver, signature flag and
// signature) in STDERR_WRITE chunks. On failure the chunks written so far
// are still sent (performOp flushes the sink before rethrowing).
func (c *conn) exportPath(path string, sign bool) error {
	if err := c.printMsg(lvlInfo, "exporting path `%s'", path); err != nil {
		return err
	}
	info, ok := c.p.info(path)
	if !ok {
		return errorf("path `%s' is not valid", path)
	}
	rec := append([]byte(nil), info.nar...)
	rec = binary.LittleEndian.AppendUint64(rec, exportMagic)
	rec = appendString(rec, path)
	rec = binary.LittleEndian.AppendUint64(rec, uint64(len(info.refs)))
	for _, r := range info.refs {
		rec = appendString(rec, r)
	}
	rec = appendString(rec, info.deriver)
	var failure error
	if sign {
		h := sha256.Sum256(rec) // everything so far, as HashAndWriteSink saw it
		rec = binary.LittleEndian.AppendUint64(rec, 1)
		switch {
		case c.p.Sign == nil:
			failure = errorf("%s", signingKeyMissing)
		default:
			sig, err := c.p.Sign(h[:])
			if err != nil {
				failure = errorf("%v", err) // guix authenticate's reply text
			} else {
				rec = appendString(rec, sig)
			}
		}
	} else {
		rec = binary.LittleEndian.AppendUint64(rec, 0)
	}
	for len(rec) > 0 {
		n := min(len(rec), tunnelSinkSize)
		c.out.int(stderrWrite)
		c.out.bytes(rec[:n])
		rec = rec[n:]
	}
	return failure
}

// importPaths is LocalStore::importPaths(requireSignature = true) reading
// from a TunnelSource: records, each preceded by 1, until a 0.
func (c *conn) importPaths() ([]string, error) {
	src := &tunnelSource{c: c}
	d := &decoder{r: src}
	var res []string
	for {
		n, err := d.longLong()
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return res, nil
		}
		if n != 1 {
			return nil, errorf("input doesn't look like something created by `nix-store --export'")
		}
		p, err := c.importPath(src)
		if err != nil {
			return nil, err
		}
		res = append(res, p)
	}
}

// importPath is LocalStore::importPath: the record is hashed from the NAR
// through the deriver (HashAndReadSource), the signature is required and
// verified against that hash, then the path is registered unless valid.
func (c *conn) importPath(src io.Reader) (string, error) {
	rec := &recorder{r: src}
	d := &decoder{r: rec}
	if _, err := parseDump(d); err != nil {
		return "", err
	}
	narBytes := append([]byte(nil), rec.b...)
	magic, err := d.int()
	if err != nil {
		return "", err
	}
	if magic != exportMagic {
		return "", errorf("normalized archive cannot be imported; wrong format")
	}
	dst, err := d.storePath()
	if err != nil {
		return "", err
	}
	refs, err := d.storePaths()
	if err != nil {
		return "", err
	}
	deriver, err := d.string()
	if err != nil {
		return "", err
	}
	if deriver != "" {
		if err := assertStorePath(deriver); err != nil {
			return "", err
		}
	}
	hash := sha256.Sum256(rec.b)

	plain := &decoder{r: src} // hashing stops here
	haveSig, err := plain.int()
	if err != nil {
		return "", err
	}
	if haveSig != 1 {
		return "", errorf("imported archive of `%s' lacks a signature", dst)
	}
	sig, err := plain.string()
	if err != nil {
		return "", err
	}
	if err := c.verifySignature(sig, hash[:]); err != nil {
		return "", err
	}

	c.addTempRoot(dst)
	if c.p.IsValid(dst) {
		return dst, nil
	}
	if deriver != "" && !c.p.IsValid(deriver) {
		deriver = "" // "info.deriver = deriver != "" && isValidPath(deriver) ? deriver : """
	}
	info, err := newInfo(dst, narBytes, refs, deriver)
	if err != nil {
		return "", errorf("%v", err)
	}
	return dst, c.p.register([]string{dst}, []*pathInfo{info})
}

// verifySignature stands in for verifySignature in local-store.cc, which
// asks `guix authenticate verify` for the hash a signature signs and
// compares it with the record's. Authorize decides both steps. A refusal
// is worded as guix authenticate's (guix/scripts/authenticate.scm
// validate-signature): "corrupt signature data" when the signature is not
// an sexp with data and public-key parts, else "unauthorized public key"
// (a bool cannot tell an unknown key from a bad signature or another
// record's hash, so the peer says the likeliest).
func (c *conn) verifySignature(sig string, recordHash []byte) error {
	if sig != "" && c.p.Authorize != nil && c.p.Authorize(sig, recordHash) {
		return nil
	}
	node, err := sexp.Parse([]byte(sig))
	if err == nil {
		_, hasData := node.Find("data")
		if subject, ok := node.Find("public-key"); ok && hasData {
			return errorf("unauthorized public key: %s", subject.Advanced())
		}
	}
	return errorf("corrupt signature data: %s", sig)
}

// tunnelSource is nix-daemon.cc's TunnelSource: whenever its buffer is
// empty it sends STDERR_READ for 32 KiB and reads the client's answer.
// While it waits, canSendStderr is false, so an error in the answer drops
// the connection; an empty answer is "unexpected end-of-file" after
// startWork, which the connection survives.
type tunnelSource struct {
	c   *conn
	buf []byte
}

func (t *tunnelSource) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(t.buf) == 0 {
		c := t.c
		c.canSendStderr = false
		c.out.int(stderrRead)
		c.out.int(tunnelSourceSize)
		if err := c.w.Flush(); err != nil {
			return 0, err
		}
		n, err := c.in.int()
		if err != nil {
			return 0, err
		}
		if n > tunnelSourceSize {
			return 0, errorf("string is too long")
		}
		buf := make([]byte, n)
		if err := c.in.full(buf); err != nil {
			return 0, err
		}
		if err := c.in.padding(n); err != nil {
			return 0, err
		}
		c.startWork()
		if n == 0 {
			return 0, errorf("unexpected end-of-file")
		}
		t.buf = buf
	}
	n := copy(p, t.buf)
	t.buf = t.buf[n:]
	return n, nil
}

// recorder keeps a copy of what is read through it (SavingSourceAdapter,
// HashAndReadSource).
type recorder struct {
	r io.Reader
	b []byte
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.b = append(r.b, p[:n]...)
	return n, err
}
