// Package nar reads, writes, validates and hashes Nix ARchives (NAR) as
// streams: nothing here holds a whole archive in memory.
//
// The format (protocols.md §2, Nix's archive.cc, Guix's serialization.scm):
// every token is a framed string (u64 little-endian length, the bytes, zero
// padding to a multiple of 8).
//
//	nar       := "nix-archive-1" node
//	node      := "(" "type" ( regular | symlink | directory ) ")"
//	regular   := "regular" [ "executable" "" ] "contents" <bytes>
//	symlink   := "symlink" "target" <target>
//	directory := "directory" { "entry" "(" "name" <name> "node" node ")" }
package nar
