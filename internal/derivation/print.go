package derivation

import "bytes"

// Bytes prints d in ATerm form, byte for byte as Nix and Guix write it.
// Lists are printed in their current order; call Canonicalize first on a
// Derivation built by hand.
func (d *Derivation) Bytes() []byte {
	var b bytes.Buffer
	b.Grow(d.sizeHint())
	d.write(&b, false)
	return b.Bytes()
}

// write prints d; mask blanks output paths and the output env vars, which is
// the form hashed to compute input-addressed output paths.
func (d *Derivation) write(b *bytes.Buffer, mask bool) {
	b.WriteString("Derive([")
	for i, o := range d.Outputs {
		comma(b, i)
		b.WriteByte('(')
		writeString(b, o.Name)
		b.WriteByte(',')
		if mask {
			b.WriteString(`""`)
		} else {
			writeString(b, o.Path)
		}
		b.WriteByte(',')
		writeString(b, o.HashAlgo)
		b.WriteByte(',')
		writeString(b, o.Hash)
		b.WriteByte(')')
	}
	b.WriteString("],[")
	for i, in := range d.InputDrvs {
		comma(b, i)
		b.WriteByte('(')
		writeString(b, in.Path)
		b.WriteString(",")
		writeStrings(b, in.Outputs)
		b.WriteByte(')')
	}
	b.WriteString("],")
	writeStrings(b, d.InputSrcs)
	b.WriteByte(',')
	writeString(b, d.System)
	b.WriteByte(',')
	writeString(b, d.Builder)
	b.WriteByte(',')
	writeStrings(b, d.Args)
	b.WriteString(",[")
	for i, e := range d.Env {
		comma(b, i)
		b.WriteByte('(')
		writeString(b, e.Key)
		b.WriteByte(',')
		if mask && d.hasOutput(e.Key) {
			b.WriteString(`""`)
		} else {
			writeString(b, e.Value)
		}
		b.WriteByte(')')
	}
	b.WriteString("])")
}

func (d *Derivation) hasOutput(name string) bool {
	for _, o := range d.Outputs {
		if o.Name == name {
			return true
		}
	}
	return false
}

func (d *Derivation) sizeHint() int {
	n := 64 + len(d.System) + len(d.Builder)
	for _, o := range d.Outputs {
		n += 12 + len(o.Name) + len(o.Path) + len(o.HashAlgo) + len(o.Hash)
	}
	for _, in := range d.InputDrvs {
		n += 8 + len(in.Path)
		for _, o := range in.Outputs {
			n += 3 + len(o)
		}
	}
	for _, s := range d.InputSrcs {
		n += 3 + len(s)
	}
	for _, s := range d.Args {
		n += 3 + len(s)
	}
	for _, e := range d.Env {
		n += 8 + len(e.Key) + len(e.Value)
	}
	return n + n/64 // room for a few escapes
}

func comma(b *bytes.Buffer, i int) {
	if i > 0 {
		b.WriteByte(',')
	}
}

func writeStrings(b *bytes.Buffer, ss []string) {
	b.WriteByte('[')
	for i, s := range ss {
		comma(b, i)
		writeString(b, s)
	}
	b.WriteByte(']')
}

func writeString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	start := 0
	for i := 0; i < len(s); i++ {
		var esc string
		switch s[i] {
		case '"':
			esc = `\"`
		case '\\':
			esc = `\\`
		case '\n':
			esc = `\n`
		case '\r':
			esc = `\r`
		case '\t':
			esc = `\t`
		default:
			continue
		}
		b.WriteString(s[start:i])
		b.WriteString(esc)
		start = i + 1
	}
	b.WriteString(s[start:])
	b.WriteByte('"')
}
