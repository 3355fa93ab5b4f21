package main

import (
	"fmt"
	"os"
)

// The user the controller and the agent run as: distroless's "nonroot", so that policies written
// for those images (runAsUser: 65532) fit ours.
const (
	nonrootID   = 65532
	nonrootUser = "65532:65532"
	rootUser    = "0:0"
)

// hostCABundle is where Debian and most distributions keep the CA bundle; Go's crypto/x509 looks
// there first, so an HTTPS bucket is verified with no SSL_CERT_FILE.
const hostCABundle = "/etc/ssl/certs/ca-certificates.crt"

// baseTree is what no base image can give us here (none can be pulled): the users, a /tmp, and
// the CA bundle of the build host when it has one. Every image's first layer, so it is stored once
// per registry or containerd whatever the image.
func baseTree() (*tree, error) {
	t := newTree()
	t.file("/etc/passwd", 0o644, []byte(
		"root:x:0:0:root:/root:/sbin/nologin\n"+
			fmt.Sprintf("nonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", nonrootID, nonrootID)))
	t.file("/etc/group", 0o644, []byte(
		"root:x:0:\n"+
			fmt.Sprintf("nonroot:x:%d:\n", nonrootID)))
	t.dir("/tmp", 0o1777)
	t.dir("/root", 0o700)
	// The one entry not owned by root: a home the non-root user can write, as in distroless.
	t.ownedDir("/home/nonroot", 0o700, nonrootID)
	switch data, err := os.ReadFile(hostCABundle); {
	case err == nil:
		t.file(hostCABundle, 0o644, data) // whatever its mode on the host, every user reads it
	case !os.IsNotExist(err):
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	return t, nil
}
