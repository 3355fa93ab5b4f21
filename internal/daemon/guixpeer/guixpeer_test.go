package guixpeer_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/guixfarm/guix-farm/internal/daemon/guixpeer"
	"github.com/guixfarm/guix-farm/internal/derivation"
	"github.com/guixfarm/guix-farm/internal/storepath"
)

// Raw frame values, spelled out here rather than imported, so the tests
// check the peer against worker-protocol.hh independently of its code.
const (
	magic1      = 0x6e697863
	magic2      = 0x6478696f
	stderrNext  = 0x6f6c6d67
	stderrRead  = 0x64617461
	stderrWrite = 0x64617416
	stderrLast  = 0x616c7473
	stderrError = 0x63787470
	exportMagic = 0x4558494e

	opIsValidPath     = 1
	opAddTextToStore  = 8
	opBuildPaths      = 9
	opEnsurePath      = 10
	opAddTempRoot     = 11
	opExportPath      = 16
	opSetOptions      = 19
	opCollectGarbage  = 20
	opQueryPathInfo   = 26
	opImportPaths     = 27
	opQueryValidPaths = 31
	opBuiltins        = 80
	opSubstituteURLs  = 81
)

const (
	pathA = "/gnu/store/0123456789abcdfghijklmnpqrsvwxyz-a"
	pathB = "/gnu/store/zyxwvsrqpnmlkjihgfdcba9876543210-b"
)

// client is a minimal, hand-written Guix client.
type client struct {
	t     *testing.T
	nc    net.Conn
	r     *bufio.Reader
	w     *bufio.Writer
	minor uint64
}

func dial(t *testing.T, socket string) *client {
	t.Helper()
	nc, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	return &client{t: t, nc: nc, r: bufio.NewReader(nc), w: bufio.NewWriter(nc)}
}

func (c *client) int(v uint64) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	c.w.Write(b[:])
}

func (c *client) str(s string) {
	c.int(uint64(len(s)))
	c.w.WriteString(s)
	if n := len(s) % 8; n != 0 {
		c.w.Write(make([]byte, 8-n))
	}
}

func (c *client) strs(ss ...string) {
	c.int(uint64(len(ss)))
	for _, s := range ss {
		c.str(s)
	}
}

func (c *client) flush() {
	c.t.Helper()
	if err := c.w.Flush(); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) readInt() uint64 {
	c.t.Helper()
	var b [8]byte
	if _, err := io.ReadFull(c.r, b[:]); err != nil {
		c.t.Fatalf("reading an integer: %v", err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

func (c *client) readStr() string {
	c.t.Helper()
	n := c.readInt()
	b := make([]byte, (n+7)/8*8)
	if _, err := io.ReadFull(c.r, b); err != nil {
		c.t.Fatalf("reading a string: %v", err)
	}
	for _, z := range b[n:] {
		if z != 0 {
			c.t.Fatalf("non-zero padding after %q", b[:n])
		}
	}
	return string(b[:n])
}

func (c *client) readStrs() []string {
	c.t.Helper()
	n := c.readInt()
	out := []string{}
	for i := uint64(0); i < n; i++ {
		out = append(out, c.readStr())
	}
	return out
}

// handshake greets as a client of the given version and checks the
// daemon's reply.
func (c *client) handshake(version, daemonVersion uint64) {
	c.t.Helper()
	c.int(magic1)
	c.flush()
	if got := c.readInt(); got != magic2 {
		c.t.Fatalf("daemon magic = %#x, want %#x", got, magic2)
	}
	if got := c.readInt(); got != daemonVersion {
		c.t.Fatalf("daemon version = %#x, want %#x", got, daemonVersion)
	}
	c.minor = version & 0xff
	c.int(version)
	if c.minor >= 14 {
		c.int(0) // no CPU affinity
	}
	if c.minor >= 11 {
		c.int(0) // reserveSpace
	}
	c.flush()
	if res := c.stderr(nil); res.failed {
		c.t.Fatalf("handshake: error %q", res.err)
	}
}

// stderrResult is what a stderr stream carried up to LAST or ERROR.
type stderrResult struct {
	next    []string
	written []byte // STDERR_WRITE data
	reads   int    // STDERR_READ requests
	failed  bool
	err     string
	status  uint64
}

// stderr processes the stream as guix/store.scm process-stderr does,
// answering READ from src.
func (c *client) stderr(src io.Reader) stderrResult {
	c.t.Helper()
	var res stderrResult
	for {
		switch k := c.readInt(); k {
		case stderrNext:
			res.next = append(res.next, c.readStr())
		case stderrWrite:
			res.written = append(res.written, c.readStr()...)
		case stderrRead:
			res.reads++
			max := c.readInt()
			if max != 32768 {
				c.t.Errorf("READ asks for %d bytes, want 32768", max)
			}
			buf := make([]byte, max)
			n, _ := io.ReadFull(src, buf)
			c.str(string(buf[:n]))
			c.flush()
		case stderrLast:
			return res
		case stderrError:
			res.failed = true
			res.err = c.readStr()
			if c.minor >= 8 {
				res.status = c.readInt()
			}
			return res
		default:
			c.t.Fatalf("unknown stderr code %#x", k)
		}
	}
}

// expectClosed checks that the daemon hung up.
func (c *client) expectClosed() {
	c.t.Helper()
	if _, err := c.r.ReadByte(); !errors.Is(err, io.EOF) {
		c.t.Fatalf("connection still open (read: %v)", err)
	}
}

// setOptions sends SetOptions in Guix's layout for c's minor version.
func (c *client) setOptions(verbosity uint64, printBuildTrace bool, overrides ...string) stderrResult {
	c.t.Helper()
	c.int(opSetOptions)
	c.int(0)         // keepFailed
	c.int(0)         // keepGoing
	c.int(0)         // tryFallback
	c.int(verbosity) // verbosity
	if c.minor < 0x61 {
		c.int(1)    // maxBuildJobs
		c.int(3600) // maxSilentTime
	}
	c.int(1) // useBuildHook
	c.int(0) // buildVerbosity
	c.int(0) // logType
	c.int(b2i(printBuildTrace))
	if c.minor < 0x61 {
		c.int(2) // buildCores
	}
	c.int(1) // useSubstitutes
	c.int(uint64(len(overrides) / 2))
	for _, s := range overrides {
		c.str(s)
	}
	c.flush()
	return c.stderr(nil)
}

func b2i(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// narFile is the NAR of a non-executable regular file.
func narFile(contents string) []byte {
	var b bytes.Buffer
	c := &client{w: bufio.NewWriter(&b)}
	for _, s := range []string{"nix-archive-1", "(", "type", "regular", "contents", contents, ")"} {
		c.str(s)
	}
	c.w.Flush()
	return b.Bytes()
}

func TestHandshakeAndVersionGatedOps(t *testing.T) {
	for _, v := range []uint64{0x163, 0x164} {
		p := guixpeer.New(v)
		socket := guixpeer.Listen(t, p)
		c := dial(t, socket)
		c.handshake(0x163, v)

		c.int(opBuiltins)
		c.flush()
		if res := c.stderr(nil); res.failed {
			t.Fatalf("%#x BuiltinBuilders: %q", v, res.err)
		}
		if got, want := c.readStrs(), []string{"download", "git-download"}; !reflect.DeepEqual(got, want) {
			t.Errorf("%#x BuiltinBuilders = %q, want %q", v, got, want)
		}

		c.int(opSubstituteURLs)
		c.flush()
		res := c.stderr(nil)
		if v == 0x163 {
			// Not an operation of the 0x163 daemon: performOp's default
			// case throws before startWork, so the connection goes.
			if !res.failed || res.err != "invalid operation 81" || res.status != 1 {
				t.Fatalf("0x163 SubstituteURLs = %+v, want error \"invalid operation 81\" status 1", res)
			}
			c.expectClosed()
			continue
		}
		if res.failed {
			t.Fatalf("0x164 SubstituteURLs: %q", res.err)
		}
		if got, want := c.readStrs(), guixpeer.DefaultSubstituteURLs; !reflect.DeepEqual(got, want) {
			t.Errorf("SubstituteURLs = %q, want %q", got, want)
		}
	}
}

func TestHandshakeWithAffinityAndOldClient(t *testing.T) {
	p := guixpeer.New(0x164)
	c := dial(t, guixpeer.Listen(t, p))
	c.int(magic1)
	c.flush()
	c.readInt()
	c.readInt()
	c.int(0x163)
	c.int(1) // pin to a CPU...
	c.int(3) // ...number 3
	c.int(1) // reserveSpace
	c.flush()
	c.minor = 0x63
	if res := c.stderr(nil); res.failed {
		t.Fatal(res.err)
	}
	c.int(opIsValidPath)
	c.str(pathA)
	c.flush()
	c.stderr(nil)
	if c.readInt() != 0 {
		t.Error("IsValidPath of an empty store = true")
	}

	// A client below minor 11 sends neither word.
	c = dial(t, guixpeer.Listen(t, p))
	c.handshake(0x10a, 0x164)
	c.int(opIsValidPath)
	c.str(pathA)
	c.flush()
	c.stderr(nil)
	c.readInt()
}

func TestSetOptionsLayout(t *testing.T) {
	p := guixpeer.New(0x164)
	socket := guixpeer.Listen(t, p)
	c := dial(t, socket)
	c.handshake(0x163, 0x164)

	// Minor 0x63: no maxBuildJobs, maxSilentTime or buildCores.
	c.int(opSetOptions)
	for _, v := range []uint64{1, 0, 1, 3, 1, 2, 0, 1, 1} {
		c.int(v) // keepFailed keepGoing tryFallback verbosity useBuildHook buildVerbosity logType printBuildTrace useSubstitutes
	}
	c.int(3)
	c.str("multiplexed-build-output")
	c.str("true")
	c.str("substitute-urls")
	c.str("https://cache.example https://mirror.example")
	c.str("build-timeout")
	c.str("7")
	c.flush()
	if res := c.stderr(nil); res.failed {
		t.Fatalf("SetOptions: %q", res.err)
	}
	want := guixpeer.Options{
		KeepFailed: true, TryFallback: true, Verbosity: 3, UseBuildHook: true,
		BuildVerbosity: 2, LogType: 0, PrintBuildTrace: true, UseSubstitutes: true,
		Overrides: map[string]string{
			"multiplexed-build-output": "true",
			"substitute-urls":          "https://cache.example https://mirror.example",
			"build-timeout":            "7",
		},
	}
	if got := p.Options(); !reflect.DeepEqual(got, want) {
		t.Errorf("Options() = %+v\nwant %+v", got, want)
	}

	// The override reached the settings: an untrusted client's
	// substitute-urls is stored as untrusted-substitute-urls, which
	// SubstituteURLs prefers.
	c.int(opSubstituteURLs)
	c.flush()
	c.stderr(nil)
	if got, want := c.readStrs(), []string{"https://cache.example", "https://mirror.example"}; !reflect.DeepEqual(got, want) {
		t.Errorf("SubstituteURLs = %q, want %q", got, want)
	}

	// Minor 0x60 still sends the three fields.
	c = dial(t, socket)
	c.handshake(0x160, 0x164)
	c.int(opSetOptions)
	for _, v := range []uint64{0, 1, 0, 0, 4, 600, 0, 0, 0, 0, 8, 0} {
		c.int(v) // ... verbosity maxBuildJobs maxSilentTime useBuildHook buildVerbosity logType printBuildTrace buildCores useSubstitutes
	}
	c.int(0)
	c.flush()
	if res := c.stderr(nil); res.failed {
		t.Fatalf("SetOptions at 0x160: %q", res.err)
	}
	o := p.Options()
	if o.MaxBuildJobs != 4 || o.MaxSilentTime != 600 || o.BuildCores != 8 || !o.KeepGoing || o.UseSubstitutes {
		t.Errorf("Options() at 0x160 = %+v", o)
	}
	// Substitutes were turned off on that connection.
	c.int(opSubstituteURLs)
	c.flush()
	c.stderr(nil)
	if got := c.readStrs(); len(got) != 0 {
		t.Errorf("SubstituteURLs with substitutes off = %q, want none", got)
	}

	// A bad boolean fails Settings::update before startWork.
	c = dial(t, socket)
	c.handshake(0x163, 0x164)
	res := c.setOptions(0, false, "multiplexed-build-output", "yes")
	if !res.failed || res.err != "configuration option `multiplexed-build-output' should be either `true' or `false', not `yes'" {
		t.Fatalf("bad override: %+v", res)
	}
	c.expectClosed()
}

func TestQueryPathInfo(t *testing.T) {
	p := guixpeer.New(0x163)
	nar := narFile("hello")
	p.AddPath(pathA, nar, []string{pathB, pathA}, "")
	p.AddPath(pathB, narFile("b"), nil, "")
	c := dial(t, guixpeer.Listen(t, p))
	c.handshake(0x163, 0x163)

	missing := "/gnu/store/00000000000000000000000000000000-missing"
	c.int(opQueryPathInfo)
	c.str(missing)
	c.flush()
	res := c.stderr(nil)
	if !res.failed || res.err != "path `"+missing+"' is not valid" || res.status != 1 {
		t.Fatalf("QueryPathInfo of a missing path = %+v", res)
	}

	// The error came after startWork: the connection is still good.
	c.int(opQueryPathInfo)
	c.str(pathA)
	c.flush()
	if res := c.stderr(nil); res.failed {
		t.Fatal(res.err)
	}
	deriver, hash, refs := c.readStr(), c.readStr(), c.readStrs()
	c.readInt() // registration time
	size := c.readInt()
	sum := sha256.Sum256(nar)
	if deriver != "" || hash != hexString(sum[:]) || !reflect.DeepEqual(refs, []string{pathA, pathB}) || size != uint64(len(nar)) {
		t.Errorf("QueryPathInfo = %q %q %q %d", deriver, hash, refs, size)
	}

	c.int(opQueryValidPaths)
	c.strs(pathB, missing, pathA, pathB)
	c.flush()
	c.stderr(nil)
	if got := c.readStrs(); !reflect.DeepEqual(got, []string{pathA, pathB}) {
		t.Errorf("QueryValidPaths = %q", got)
	}

	// readStorePath fails before startWork: error, then hang-up.
	c.int(opQueryPathInfo)
	c.str("/tmp/x")
	c.flush()
	res = c.stderr(nil)
	if !res.failed || res.err != "path `/tmp/x' is not in the store" {
		t.Fatalf("QueryPathInfo outside the store = %+v", res)
	}
	c.expectClosed()
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	var s strings.Builder
	for _, x := range b {
		s.WriteByte(digits[x>>4])
		s.WriteByte(digits[x&15])
	}
	return s.String()
}

// record builds an export record (local-store.cc exportPath).
func record(nar []byte, path string, refs []string, deriver string) []byte {
	var b bytes.Buffer
	c := &client{w: bufio.NewWriter(&b)}
	c.w.Write(nar)
	c.int(exportMagic)
	c.str(path)
	c.strs(refs...)
	c.str(deriver)
	c.w.Flush()
	return b.Bytes()
}

func TestExportPath(t *testing.T) {
	p := guixpeer.New(0x164)
	big := strings.Repeat("0123456789", 10000) // > 64 KiB: several WRITE chunks
	nar := narFile(big)
	p.AddPath(pathA, nar, []string{pathB}, "")
	p.AddPath(pathB, narFile("b"), nil, "")
	var signed []byte
	p.Sign = func(h []byte) (string, error) {
		signed = h
		return "(signature)", nil
	}
	c := dial(t, guixpeer.Listen(t, p))
	c.handshake(0x163, 0x164)
	c.setOptions(0, false)

	want := record(nar, pathA, []string{pathB}, "")
	for _, sign := range []bool{false, true} {
		c.int(opExportPath)
		c.str(pathA)
		c.int(b2i(sign))
		c.flush()
		res := c.stderr(nil)
		if res.failed {
			t.Fatalf("ExportPath: %q", res.err)
		}
		if got := c.readInt(); got != 1 {
			t.Errorf("ExportPath reply = %d, want 1", got)
		}
		if len(res.next) != 0 {
			t.Errorf("messages at verbosity 0: %q", res.next)
		}
		body, trailer := res.written[:min(len(want), len(res.written))], res.written[min(len(want), len(res.written)):]
		if !bytes.Equal(body, want) {
			t.Fatalf("record (sign=%v) differs from NAR+magic+path+refs+deriver", sign)
		}
		if !sign {
			if !bytes.Equal(trailer, make([]byte, 8)) {
				t.Errorf("unsigned trailer = %x, want u64 0", trailer)
			}
			continue
		}
		var tb bytes.Buffer
		tc := &client{w: bufio.NewWriter(&tb)}
		tc.int(1)
		tc.str("(signature)")
		tc.w.Flush()
		if !bytes.Equal(trailer, tb.Bytes()) {
			t.Errorf("signed trailer = %x, want u64 1 + signature", trailer)
		}
		if h := sha256.Sum256(want); !bytes.Equal(signed, h[:]) {
			t.Errorf("Sign got %x, want the SHA-256 of the record through the deriver", signed)
		}
	}

	// Without a key, the record is still flushed, then the error comes.
	p.Sign = nil
	c.int(opExportPath)
	c.str(pathA)
	c.int(1)
	c.flush()
	res := c.stderr(nil)
	if !res.failed || res.err != "getting status of `/etc/guix/signing-key.sec': No such file or directory" {
		t.Fatalf("unsigned export without key = %+v", res)
	}
	if !bytes.HasPrefix(res.written, want) {
		t.Errorf("record not sent before the error")
	}
}

// makeDrv returns a valid derivation named name and its .drv path and text.
func makeDrv(t *testing.T, name string) (drvPath string, text []byte, out string) {
	t.Helper()
	dir := storepath.Dir("/gnu/store")
	d := &derivation.Derivation{
		Outputs: []derivation.Output{{Name: "out"}},
		System:  "x86_64-linux",
		Builder: "/gnu/store/1b3m0rpfi1pv4dm6vrz1s5kcmrdl4dkv-bash/bin/sh",
		Args:    []string{"-c", "true"},
		Env:     []derivation.EnvVar{{Key: "name", Value: name}},
	}
	if err := d.FillOutputPaths(dir, name, nil); err != nil {
		t.Fatal(err)
	}
	drvPath, err := d.DrvPath(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return drvPath, d.Bytes(), d.OutputPaths()["out"]
}

func TestBuildLog(t *testing.T) {
	p := guixpeer.New(0x164)
	drv, text, out := makeDrv(t, "hello")
	outNAR := narFile("built; see " + pathA)
	p.AddPath(pathA, narFile("a"), nil, "")
	p.OnBuild(drv, func(ctx context.Context, w io.Writer) (map[string][]byte, error) {
		io.WriteString(w, "hello\n")
		io.WriteString(w, "world!\n")
		return map[string][]byte{"out": outNAR}, nil
	})
	socket := guixpeer.Listen(t, p)
	c := dial(t, socket)
	c.handshake(0x163, 0x164)
	c.setOptions(0, true, "multiplexed-build-output", "true")

	// The .drv goes in with AddTextToStore, at the path Guix computes.
	c.int(opAddTextToStore)
	c.str(name(drv))
	c.str(string(text))
	c.strs()
	c.flush()
	if res := c.stderr(nil); res.failed {
		t.Fatalf("AddTextToStore: %q", res.err)
	}
	if got := c.readStr(); got != drv {
		t.Fatalf("AddTextToStore = %s, want %s", got, drv)
	}

	c.int(opBuildPaths)
	c.strs(drv + "!out")
	c.int(0) // bmNormal
	c.flush()
	res := c.stderr(nil)
	if res.failed {
		t.Fatalf("BuildPaths: %q", res.err)
	}
	if c.readInt() != 1 {
		t.Error("BuildPaths reply != 1")
	}
	base := path(drv)
	log := "/var/log/guix/drvs/" + base[:2] + "/" + base[2:] + ".gz"
	want := []string{
		"@ build-started " + drv + " - x86_64-linux " + log + " 4001\n",
		"@ build-log 4001 6\nhello\n",
		"@ build-log 4001 7\nworld!\n",
		"@ build-succeeded " + drv + " -\n",
	}
	if !reflect.DeepEqual(res.next, want) {
		t.Errorf("build messages:\n%q\nwant\n%q", res.next, want)
	}
	c.int(opQueryPathInfo)
	c.str(out)
	c.flush()
	c.stderr(nil)
	if deriver, _, refs := c.readStr(), c.readStr(), c.readStrs(); deriver != drv || len(refs) != 0 {
		// pathA is not an input, so scanning does not count it.
		t.Errorf("output info: deriver %q refs %q", deriver, refs)
	}
	c.readInt()
	c.readInt()

	// Building again is a no-op: the output is valid.
	c.int(opBuildPaths)
	c.strs(drv)
	c.int(0)
	c.flush()
	if res := c.stderr(nil); res.failed || len(res.next) != 0 {
		t.Errorf("rebuild: %+v", res)
	}
	c.readInt()

	// Without multiplexing the output comes as plain NEXT text.
	drv2, text2, _ := makeDrv(t, "plain")
	p.OnBuild(drv2, func(ctx context.Context, w io.Writer) (map[string][]byte, error) {
		io.WriteString(w, "plain output\n")
		return map[string][]byte{"out": narFile("x")}, nil
	})
	c = dial(t, socket)
	c.handshake(0x163, 0x164)
	c.setOptions(0, false)
	c.int(opAddTextToStore)
	c.str(name(drv2))
	c.str(string(text2))
	c.strs()
	c.flush()
	c.stderr(nil)
	c.readStr()
	c.int(opBuildPaths)
	c.strs(drv2 + "!out")
	c.int(0)
	c.flush()
	if res := c.stderr(nil); res.failed || !reflect.DeepEqual(res.next, []string{"plain output\n"}) {
		t.Errorf("plain build: %+v", res)
	}
	c.readInt()
}

func TestBuildFailure(t *testing.T) {
	p := guixpeer.New(0x164)
	drv, text, _ := makeDrv(t, "broken")
	p.AddPath(drv, narFile(string(text)), nil, "")
	p.OnBuild(drv, func(ctx context.Context, w io.Writer) (map[string][]byte, error) {
		io.WriteString(w, "oops\n")
		return nil, errors.New("exit status 1")
	})
	c := dial(t, guixpeer.Listen(t, p))
	c.handshake(0x163, 0x164)
	c.setOptions(0, true)
	c.int(opBuildPaths)
	c.strs(drv + "!out")
	c.int(0)
	c.flush()
	res := c.stderr(nil)
	msg := "builder for `" + drv + "' failed with exit code 1"
	wantNext := []string{
		res.next[0], // @ build-started
		"oops\n",
		msg + "\n",
		"@ build-failed " + drv + " - 1 " + msg + "\n",
	}
	if !res.failed || res.err != "build of `"+drv+"' failed" || res.status != 100 || !reflect.DeepEqual(res.next, wantNext) {
		t.Fatalf("failed build = %+v", res)
	}
	// The connection survives a failed build.
	c.int(opIsValidPath)
	c.str(drv)
	c.flush()
	c.stderr(nil)
	if c.readInt() != 1 {
		t.Error("the .drv is not valid")
	}
}

func TestBuildTimeout(t *testing.T) {
	p := guixpeer.New(0x164)
	drv, text, _ := makeDrv(t, "slow")
	p.AddPath(drv, narFile(string(text)), nil, "")
	p.OnBuild(drv, func(ctx context.Context, w io.Writer) (map[string][]byte, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	c := dial(t, guixpeer.Listen(t, p))
	c.handshake(0x163, 0x164)
	c.setOptions(0, true, "build-max-silent-time", "1")
	c.int(opBuildPaths)
	c.strs(drv)
	c.int(0)
	c.flush()
	res := c.stderr(nil)
	if !res.failed || res.status != 101 || len(res.next) != 3 ||
		res.next[1] != "building of `"+drv+"' timed out after 1 seconds of silence\n" ||
		res.next[2] != "@ build-failed "+drv+" - timeout\n" {
		t.Fatalf("timed-out build = %+v", res)
	}
}

func path(p string) string { return p[len("/gnu/store/"):] }

// name is storePathToName: the base name without the hash part.
func name(p string) string { return path(p)[33:] }

func TestImportPaths(t *testing.T) {
	p := guixpeer.New(0x164)
	nar := narFile(strings.Repeat("x", 70000)) // > 32 KiB: several READs
	rec := record(nar, pathA, nil, "")
	recHash := sha256.Sum256(rec)
	p.Authorize = func(sig string, h []byte) bool {
		return sig == "(signature (data) (public-key (ecc)))" && bytes.Equal(h, recHash[:])
	}
	c := dial(t, guixpeer.Listen(t, p))
	c.handshake(0x163, 0x164)
	c.setOptions(0, false)

	stream := func(sig *string) io.Reader {
		var b bytes.Buffer
		e := &client{w: bufio.NewWriter(&b)}
		e.int(1)
		e.w.Write(rec)
		if sig == nil {
			e.int(0)
		} else {
			e.int(1)
			e.str(*sig)
		}
		e.int(0)
		e.w.Flush()
		return &b
	}

	c.int(opImportPaths)
	c.flush()
	res := c.stderr(stream(nil))
	if !res.failed || res.err != "imported archive of `"+pathA+"' lacks a signature" || res.status != 1 {
		t.Fatalf("unsigned import = %+v", res)
	}
	if res.reads < 3 {
		t.Errorf("unsigned import: %d READs, want the record pulled in 32 KiB pieces", res.reads)
	}

	bad := "(signature (data (hash sha256 #00#)) (public-key (ecc (curve Ed25519))))"
	c.int(opImportPaths)
	c.flush()
	res = c.stderr(stream(&bad))
	if !res.failed || !strings.HasPrefix(res.err, "unauthorized public key: (public-key") {
		t.Fatalf("import signed by an unknown key = %+v", res)
	}

	good := "(signature (data) (public-key (ecc)))"
	c.int(opImportPaths)
	c.flush()
	res = c.stderr(stream(&good))
	if res.failed {
		t.Fatalf("signed import: %q", res.err)
	}
	if got := c.readStrs(); !reflect.DeepEqual(got, []string{pathA}) {
		t.Errorf("ImportPaths = %q", got)
	}
	if !p.IsValid(pathA) {
		t.Error("imported path is not valid")
	}
	if got, _ := p.PathNAR(pathA); !bytes.Equal(got, nar) {
		t.Error("imported NAR differs")
	}
	if !reflect.DeepEqual(p.TempRoots(), []string{pathA}) {
		t.Errorf("TempRoots = %q, want the imported path", p.TempRoots())
	}
}

func TestEnsurePathAndGC(t *testing.T) {
	p := guixpeer.New(0x164)
	p.AddSubstitute(pathA, narFile("a"), []string{pathB}, "")
	p.AddSubstitute(pathB, narFile("b"), nil, "")
	c := dial(t, guixpeer.Listen(t, p))
	c.handshake(0x163, 0x164)
	c.setOptions(1, true)

	c.int(opEnsurePath)
	c.str(pathA)
	c.flush()
	res := c.stderr(nil)
	want := []string{
		"fetching path `" + pathB + "'...\n",
		"@ substituter-started " + pathB + " substitute\n",
		"@ substituter-succeeded " + pathB + "\n",
		"fetching path `" + pathA + "'...\n",
		"@ substituter-started " + pathA + " substitute\n",
		"@ substituter-succeeded " + pathA + "\n",
	}
	if res.failed || !reflect.DeepEqual(res.next, want) {
		t.Fatalf("EnsurePath = %+v", res)
	}
	c.readInt()

	missing := "/gnu/store/00000000000000000000000000000000-missing"
	c.int(opEnsurePath)
	c.str(missing)
	c.flush()
	if res := c.stderr(nil); res.err != "path `"+missing+"' does not exist and cannot be created" {
		t.Fatalf("EnsurePath of a missing path = %+v", res)
	}

	// pathA is a temp root of this connection (the substitution goal
	// added it), so deleting it fails; pathB is alive through it.
	c.int(opCollectGarbage)
	c.int(3) // gcDeleteSpecific
	c.strs(pathB)
	c.int(0)
	c.int(^uint64(0))
	c.int(0)
	c.int(0)
	c.int(0)
	c.flush()
	res = c.stderr(nil)
	if !res.failed || res.err != "cannot delete path `"+pathB+"' since it is still alive" || res.next[0] != "finding garbage collector roots...\n" {
		t.Fatalf("deleting a live path = %+v", res)
	}

	// From a second connection, once the first has gone, both are dead.
	c.nc.Close()
	c2 := dial(t, guixpeer.Listen(t, p))
	c2.handshake(0x163, 0x164)
	c2.setOptions(0, false)
	gc := func(action uint64) stderrResult {
		c2.int(opCollectGarbage)
		c2.int(action)
		c2.strs()
		c2.int(0)
		c2.int(^uint64(0))
		c2.int(0)
		c2.int(0)
		c2.int(0)
		c2.flush()
		return c2.stderr(nil)
	}
	// Wait for the first Serve to notice the hang-up and drop its roots.
	for deadline := time.Now().Add(5 * time.Second); ; {
		if res := gc(1); res.failed { // gcReturnDead
			t.Fatal(res.err)
		}
		dead := c2.readStrs()
		c2.readInt()
		c2.readInt()
		if len(dead) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still alive after the first connection closed: dead = %q", dead)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if res := gc(2); res.failed { // gcDeleteDead
		t.Fatal(res.err)
	}
	if got := c2.readStrs(); !reflect.DeepEqual(got, []string{pathA, pathB}) {
		t.Errorf("deleted %q", got)
	}
	if freed := c2.readInt(); freed == 0 {
		t.Error("no bytes freed")
	}
	c2.readInt()
	if p.IsValid(pathA) || p.IsValid(pathB) {
		t.Error("GC left dead paths valid")
	}
}

func TestTempRootAndUnknownOp(t *testing.T) {
	p := guixpeer.New(0x164)
	c := dial(t, guixpeer.Listen(t, p))
	c.handshake(0x163, 0x164)
	c.int(opAddTempRoot)
	c.str(pathB)
	c.flush()
	c.stderr(nil)
	if c.readInt() != 1 || !reflect.DeepEqual(p.TempRoots(), []string{pathB}) {
		t.Errorf("TempRoots = %q", p.TempRoots())
	}
	c.int(99)
	c.flush()
	if res := c.stderr(nil); res.err != "invalid operation 99" || res.status != 1 {
		t.Fatalf("unknown op = %+v", res)
	}
	c.expectClosed()
}

func TestBuildMessagesAtVerbosityInfo(t *testing.T) {
	p := guixpeer.New(0x164)
	drv, text, out := makeDrv(t, "nested")
	p.AddPath(drv, narFile(string(text)), nil, "")
	p.OnBuild(drv, func(ctx context.Context, w io.Writer) (map[string][]byte, error) {
		return map[string][]byte{"out": narFile("x")}, nil
	})
	c := dial(t, guixpeer.Listen(t, p))
	c.handshake(0x163, 0x164)
	c.setOptions(1, true) // verbosity lvlInfo, logType ltPretty
	c.int(opBuildPaths)
	c.strs(drv)
	c.int(0)
	c.flush()
	res := c.stderr(nil)
	if res.failed {
		t.Fatal(res.err)
	}
	c.readInt()
	// startBuilder's nest indents the trace printed inside it.
	if len(res.next) != 3 || res.next[0] != "building path(s) `"+out+"'\n" ||
		!strings.HasPrefix(res.next[1], "|   @ build-started "+drv+" - ") ||
		res.next[2] != "@ build-succeeded "+drv+" -\n" {
		t.Errorf("messages = %q", res.next)
	}
}

func TestUnsupportedPlatform(t *testing.T) {
	p := guixpeer.New(0x164)
	p.System = "aarch64-linux"
	drv, text, _ := makeDrv(t, "foreign") // x86_64-linux
	p.AddPath(drv, narFile(string(text)), nil, "")
	c := dial(t, guixpeer.Listen(t, p))
	c.handshake(0x163, 0x164)
	c.setOptions(0, false)
	c.int(opBuildPaths)
	c.strs(drv)
	c.int(0)
	c.flush()
	res := c.stderr(nil)
	want := "while setting up the build environment: a `x86_64-linux' is required to build `" + drv + "', but I am a `aarch64-linux'"
	if !res.failed || res.err != want || res.status != 1 {
		t.Fatalf("foreign build = %+v", res)
	}
}
