// Package integration runs the farm against a real kube-apiserver and etcd (envtest on the pinned
// binaries): the controller in-process, agents as real processes with the test builder.
package integration

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	farmv1 "github.com/guixfarm/guix-farm/api/v1alpha1"
	"github.com/guixfarm/guix-farm/test/farm"
)

var env *farm.Env

func TestMain(m *testing.M) {
	ctrllog.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	e, skip, err := farm.StartEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if e == nil {
		fmt.Fprintln(os.Stderr, "skipping integration tests:", skip)
		os.Exit(0)
	}
	env = e
	code := m.Run()
	_ = e.Stop()
	os.Exit(code)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, last)
}

func listBuilds(t testing.TB, ns string) []farmv1.Build {
	t.Helper()
	var l farmv1.BuildList
	if err := env.Client.List(context.Background(), &l, client.InNamespace(ns)); err != nil {
		t.Fatalf("listing builds: %v", err)
	}
	return l.Items
}

func phases(bs []farmv1.Build) map[farmv1.BuildPhase]int {
	m := map[farmv1.BuildPhase]int{}
	for _, b := range bs {
		m[b.Status.Phase]++
	}
	return m
}
