// Package daemon is a client of the guix-daemon / nix-daemon worker
// protocol, the Unix-socket protocol through which Guix and Nix clients ask
// the daemon to build, substitute, import and export store paths.
//
// Both daemons descend from the same Nix 0.x code and share the framing
// (u64 little-endian integers, length-prefixed strings padded with zeros to
// 8 bytes) and the core operations, but diverged after protocol 1.15: Guix
// moved to minor versions 0x60 and up for its own changes, Nix went on to
// 1.34 (Nix 2.8) and beyond. Dial reads the daemon's version word and picks
// the dialect; every version-dependent field is then gated on the
// negotiated version, min(ours, the daemon's), never on a Nix minor number
// when talking to Guix. docs/daemon.md and the project's protocol notes
// (protocols.md §1) describe the wire format.
//
// A Conn runs one operation at a time. While an operation runs the daemon
// sends a stream of log messages; they are delivered as lines to a LogSink.
// A failure the daemon reports is an *Error and leaves the Conn usable; an
// I/O or protocol error, or a canceled context, closes it (the daemon then
// stops the work it was doing for us).
//
// The package only uses the standard library and internal/nar: it is a
// ground-floor package with no knowledge of Kubernetes or the bucket.
package daemon
