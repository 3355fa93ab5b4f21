package compress

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"

	"github.com/ulikunitz/xz/lzma"
)

// lzip framing over ulikunitz/xz/lzma. sorairolake/lzip-go buffers a whole
// member in memory on both sides (bytes.Buffer when writing, io.ReadAll
// when reading), which a multi-gigabyte nar cannot afford; the format is
// simple enough to stream (the LZMA encoder holds at most its dictionary,
// ≤ 32 MiB at level 9): a 6-byte header ("LZIP", version 1, coded
// dictionary size), a raw LZMA stream with an end marker (lc=3 lp=0 pb=2),
// and a 20-byte trailer (CRC32 and size of the data, size of the member).

const (
	lzipMagic      = "LZIP"
	lzipHeaderLen  = 6
	lzipTrailerLen = 20
)

type lzipWriter struct {
	w       io.Writer
	strip   *stripWriter
	lz      *lzma.Writer
	crc     uint32
	size    uint64
	started bool
	closed  bool
	dict    uint32
}

// stripWriter drops the 13-byte .lzma header the lzma writer emits and
// counts the bytes it forwards.
type stripWriter struct {
	w    io.Writer
	skip int
	n    int64
}

func (s *stripWriter) Write(p []byte) (int, error) {
	total := len(p)
	if s.skip > 0 {
		d := min(s.skip, len(p))
		s.skip -= d
		p = p[d:]
	}
	n, err := s.w.Write(p)
	s.n += int64(n)
	if err != nil {
		return 0, err
	}
	return total, nil
}

func newLzipWriter(w io.Writer, level int) (io.WriteCloser, error) {
	dict, err := dictSize(level)
	if err != nil {
		return nil, err
	}
	// lzip codes the size as 2^n - k·2^n/16; a power of two needs k = 0.
	pow := uint32(1) << bits.Len32(uint32(dict)-1)
	s := &stripWriter{w: w, skip: lzma.HeaderLen}
	lz, err := lzma.WriterConfig{
		Properties: &lzma.Properties{LC: 3, LP: 0, PB: 2},
		DictCap:    int(pow),
		EOSMarker:  true,
	}.NewWriter(s)
	if err != nil {
		return nil, fmt.Errorf("lzip: %w", err)
	}
	return &lzipWriter{w: w, strip: s, lz: lz, dict: pow}, nil
}

func (z *lzipWriter) header() error {
	z.started = true
	h := []byte{'L', 'Z', 'I', 'P', 1, byte(bits.TrailingZeros32(z.dict))}
	_, err := z.w.Write(h)
	return err
}

func (z *lzipWriter) Write(p []byte) (int, error) {
	if !z.started {
		if err := z.header(); err != nil {
			return 0, err
		}
	}
	n, err := z.lz.Write(p)
	z.crc = crc32.Update(z.crc, crc32.IEEETable, p[:n])
	z.size += uint64(n)
	return n, err
}

func (z *lzipWriter) Close() error {
	if z.closed {
		return nil
	}
	z.closed = true
	if !z.started {
		if err := z.header(); err != nil {
			return err
		}
	}
	if err := z.lz.Close(); err != nil {
		return fmt.Errorf("lzip: %w", err)
	}
	var t [lzipTrailerLen]byte
	binary.LittleEndian.PutUint32(t[0:], z.crc)
	binary.LittleEndian.PutUint64(t[4:], z.size)
	binary.LittleEndian.PutUint64(t[12:], uint64(lzipHeaderLen+z.strip.n+lzipTrailerLen))
	_, err := z.w.Write(t[:])
	return err
}

type lzipReader struct {
	r     *bufio.Reader
	lz    *lzma.Reader
	crc   uint32
	size  uint64
	start int64 // offset where the current member began
	off   int64 // bytes consumed from r
	err   error
}

// countingReader lets the lzip reader know where each member ends, so the
// member size in the trailer can be checked.
type countingReader struct {
	r *bufio.Reader
	n *int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	*c.n += int64(n)
	return n, err
}

func (c countingReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		*c.n++
	}
	return b, err
}

func newLzipReader(r io.Reader) (io.ReadCloser, error) {
	z := &lzipReader{r: bufio.NewReaderSize(r, 64<<10)}
	if err := z.member0(true); err != nil {
		return nil, err
	}
	return z, nil
}

// member0 starts the next member; first says whether it is the first one
// (a missing first member is an error, a missing later one is the end).
func (z *lzipReader) member0(first bool) error {
	cr := countingReader{z.r, &z.off}
	z.start = z.off
	var h [lzipHeaderLen]byte
	n, err := io.ReadFull(cr, h[:])
	if !first && n == 0 && err == io.EOF {
		return io.EOF
	}
	if err != nil {
		return fmt.Errorf("lzip: reading the header: %w", unexpected(err))
	}
	if string(h[:4]) != lzipMagic {
		return fmt.Errorf("lzip: not lzip data (bad magic %q)", h[:4])
	}
	if h[4] != 1 {
		return fmt.Errorf("lzip: unsupported version %d", h[4])
	}
	dict := uint32(1) << (h[5] & 0x1f)
	dict -= dict / 16 * uint32(h[5]>>5)
	if dict < lzma.MinDictCap || dict > 1<<29 {
		return fmt.Errorf("lzip: invalid dictionary size %d", dict)
	}
	// A synthetic .lzma header with an unknown size: the stream ends at its
	// end marker, which lzip requires.
	var lh [lzma.HeaderLen]byte
	lh[0] = lzma.Properties{LC: 3, LP: 0, PB: 2}.Code()
	binary.LittleEndian.PutUint32(lh[1:], dict)
	binary.LittleEndian.PutUint64(lh[5:], ^uint64(0))
	lz, err := lzma.NewReader(io.MultiReader(bytes.NewReader(lh[:]), cr))
	if err != nil {
		return fmt.Errorf("lzip: %w", err)
	}
	z.lz, z.crc, z.size = lz, 0, 0
	return nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (z *lzipReader) Read(p []byte) (int, error) {
	for z.err == nil {
		n, err := z.lz.Read(p)
		z.crc = crc32.Update(z.crc, crc32.IEEETable, p[:n])
		z.size += uint64(n)
		if err == io.EOF {
			if z.err = z.trailer(); z.err == nil {
				z.err = z.member0(false)
			}
		} else if err != nil {
			z.err = fmt.Errorf("lzip: %w", unexpected(err))
		}
		if n > 0 {
			return n, nil
		}
	}
	return 0, z.err
}

func (z *lzipReader) trailer() error {
	var t [lzipTrailerLen]byte
	if _, err := io.ReadFull(countingReader{z.r, &z.off}, t[:]); err != nil {
		return fmt.Errorf("lzip: reading the trailer: %w", unexpected(err))
	}
	if crc := binary.LittleEndian.Uint32(t[0:]); crc != z.crc {
		return fmt.Errorf("lzip: CRC mismatch: the trailer says %08x, the data hashes to %08x (corrupt or truncated file)", crc, z.crc)
	}
	if size := binary.LittleEndian.Uint64(t[4:]); size != z.size {
		return fmt.Errorf("lzip: data size mismatch: the trailer says %d, decoded %d", size, z.size)
	}
	if m := binary.LittleEndian.Uint64(t[12:]); m != uint64(z.off-z.start) {
		return fmt.Errorf("lzip: member size mismatch: the trailer says %d, read %d", m, z.off-z.start)
	}
	return nil
}

func (z *lzipReader) Close() error { return nil }
