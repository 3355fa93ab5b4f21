// Package sexp reads and writes S-expressions the way libgcrypt (and hence
// guile-gcrypt and Guix) does: the canonical form "(3:abc)" and the
// "advanced" text form with tokens, "quoted strings", #hex# and |base64|.
//
// Guix stores keys in files and signatures in narinfos as advanced text, but
// compares them structurally, so only the tree matters; Advanced() still
// reproduces libgcrypt's layout so our output looks like Guix's own.
package sexp

import (
	"bytes"
	"fmt"
)

// Node is one S-expression: either a list of nodes or an atom (a byte
// string). The zero Node is the empty atom.
type Node struct {
	IsList bool
	List   []Node
	Atom   []byte
	// Hint is an optional display hint ("[hint]data"); libgcrypt keeps it
	// in canonical form, Guix never uses it.
	Hint []byte
}

// List builds a list node.
func List(items ...Node) Node { return Node{IsList: true, List: items} }

// Atom builds an atom holding a copy of b.
func Atom(b []byte) Node { return Node{Atom: append([]byte{}, b...)} }

// Token builds an atom from a string, such as a list name.
func Token(s string) Node { return Node{Atom: []byte(s)} }

// Named builds the common "(name item...)" list.
func Named(name string, items ...Node) Node {
	return List(append([]Node{Token(name)}, items...)...)
}

// Name returns the first element of a list when it is an atom ("" otherwise).
func (n Node) Name() string {
	if !n.IsList || len(n.List) == 0 || n.List[0].IsList {
		return ""
	}
	return string(n.List[0].Atom)
}

// Find returns the first list, depth-first and including n itself, whose
// name is name: libgcrypt's gcry_sexp_find_token.
func (n Node) Find(name string) (Node, bool) {
	if !n.IsList {
		return Node{}, false
	}
	if n.Name() == name {
		return n, true
	}
	for _, c := range n.List {
		if f, ok := c.Find(name); ok {
			return f, true
		}
	}
	return Node{}, false
}

// Nth returns element i of a list.
func (n Node) Nth(i int) (Node, bool) {
	if !n.IsList || i < 0 || i >= len(n.List) {
		return Node{}, false
	}
	return n.List[i], true
}

// NthAtom returns element i of a list if it is an atom.
func (n Node) NthAtom(i int) ([]byte, bool) {
	c, ok := n.Nth(i)
	if !ok || c.IsList {
		return nil, false
	}
	return c.Atom, true
}

// Equal reports whether two nodes have the same tree (and hints).
func (n Node) Equal(m Node) bool { return bytes.Equal(n.Canonical(), m.Canonical()) }

// String returns the advanced form; handy in error messages and tests.
func (n Node) String() string { return string(n.Advanced()) }

// Canonical returns the canonical encoding, e.g. "(4:data(5:flags7:rfc6979))".
func (n Node) Canonical() []byte {
	var b bytes.Buffer
	n.writeCanonical(&b)
	return b.Bytes()
}

func (n Node) writeCanonical(b *bytes.Buffer) {
	if n.IsList {
		b.WriteByte('(')
		for _, c := range n.List {
			c.writeCanonical(b)
		}
		b.WriteByte(')')
		return
	}
	if n.Hint != nil {
		fmt.Fprintf(b, "[%d:", len(n.Hint))
		b.Write(n.Hint)
		b.WriteByte(']')
	}
	fmt.Fprintf(b, "%d:", len(n.Atom))
	b.Write(n.Atom)
}

// Advanced returns libgcrypt's GCRYSEXP_FMT_ADVANCED rendering: each nested
// list on a new line indented by its depth, a newline after each closing
// parenthesis not followed by an opening one, atoms as tokens, quoted
// strings or #HEX# as libgcrypt would choose.
func (n Node) Advanced() []byte {
	var b bytes.Buffer
	indent := 0
	n.writeAdvanced(&b, &indent, false)
	return b.Bytes()
}

// writeAdvanced writes n; nextIsOpen tells whether the element after n (in
// its parent) is a list, which decides what follows a closing parenthesis.
func (n Node) writeAdvanced(b *bytes.Buffer, indent *int, nextIsOpen bool) {
	if !n.IsList {
		if n.Hint != nil {
			b.WriteByte('[')
			writeAdvancedAtom(b, n.Hint)
			b.WriteByte(']')
		}
		writeAdvancedAtom(b, n.Atom)
		return
	}
	if *indent > 0 {
		b.WriteByte('\n')
		b.Write(bytes.Repeat([]byte{' '}, *indent))
	}
	*indent++
	b.WriteByte('(')
	for i, c := range n.List {
		next := i+1 < len(n.List)
		nextOpen := next && n.List[i+1].IsList
		c.writeAdvanced(b, indent, nextOpen)
		if !c.IsList && next {
			b.WriteByte(' ')
		}
	}
	b.WriteByte(')')
	*indent--
	if !nextIsOpen {
		b.WriteByte('\n')
		b.Write(bytes.Repeat([]byte{' '}, *indent))
	}
}

const tokenPunct = "-./_:*+="

func isTokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		bytes.IndexByte([]byte(tokenPunct), c) >= 0
}

// quotableEscapes are the control bytes libgcrypt writes as backslash escapes.
const quotableEscapes = "\b\t\v\n\f\r\"'\\"

// encoding picks libgcrypt's representation: 0 hex, 1 quoted string, 2 token.
func encoding(a []byte) int {
	if len(a) == 0 {
		return 1
	}
	if a[0]&0x80 != 0 || a[0] == 0 {
		return 0 // looks like a (negative or padded) number
	}
	token := true
	for _, c := range a {
		if (c < 0x20 || c >= 0x7f && c <= 0xa0) && bytes.IndexByte([]byte(quotableEscapes), c) < 0 {
			return 0
		}
		if token && !isTokenByte(c) {
			token = false
		}
	}
	if token && !(a[0] >= '0' && a[0] <= '9') {
		return 2
	}
	return 1
}

func writeAdvancedAtom(b *bytes.Buffer, a []byte) {
	switch encoding(a) {
	case 2:
		b.Write(a)
	case 1:
		b.WriteByte('"')
		for _, c := range a {
			switch c {
			case '\b':
				b.WriteString(`\b`)
			case '\t':
				b.WriteString(`\t`)
			case '\v':
				b.WriteString(`\v`)
			case '\n':
				b.WriteString(`\n`)
			case '\f':
				b.WriteString(`\f`)
			case '\r':
				b.WriteString(`\r`)
			case '"':
				b.WriteString(`\"`)
			case '\'':
				b.WriteString(`\'`)
			case '\\':
				b.WriteString(`\\`)
			default:
				b.WriteByte(c)
			}
		}
		b.WriteByte('"')
	default:
		fmt.Fprintf(b, "#%X#", a)
	}
}
