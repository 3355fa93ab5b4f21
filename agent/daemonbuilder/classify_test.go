package daemonbuilder

import (
	"context"
	"testing"

	"github.com/guixfarm/guix-farm/agent/buildstep"
	"github.com/guixfarm/guix-farm/internal/daemon"
)

// A substitute server that cannot be reached is the agent's trouble (handed back, no attempt
// spent); a path the servers do not have, or a failing builder, is not.
func TestClassifySubstitutionFailures(t *testing.T) {
	b := &Builder{}
	for msg, want := range map[string]buildstep.Kind{
		"ensure path /gnu/store/x.drv: unable to download 'http://127.0.0.1:9000/farm/x.narinfo': Couldn't connect to server (7)": buildstep.KindAgentUnhealthy,
		"unable to download 'http://minio/farm/x.narinfo': HTTP error 503":                                                        buildstep.KindAgentUnhealthy,
		"path '/gnu/store/x.drv' is required, but there is no substituter that can build it":                                      buildstep.KindSetupFailed,
	} {
		got := buildstep.KindOf(b.classify(context.Background(), &daemon.Error{Message: msg}, "fetching x.drv", nil))
		if got != want {
			t.Errorf("%q: %s, want %s", msg, got, want)
		}
	}
}
