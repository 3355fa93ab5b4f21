package gccmd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/guixfarm/guix-farm/internal/gc"
	"github.com/guixfarm/guix-farm/internal/nar"
	"github.com/guixfarm/guix-farm/internal/narinfo"
	"github.com/guixfarm/guix-farm/test/testbed"
)

func TestCommandErrors(t *testing.T) {
	cases := map[string]struct {
		args []string
		want string
	}{
		"no endpoint":        {args: []string{"--bucket", "b"}, want: "--endpoint and --bucket are required"},
		"no bucket":          {args: []string{"--endpoint", "localhost:9000"}, want: "--endpoint and --bucket are required"},
		"endpoint with path": {args: []string{"--endpoint", "http://h:9000/bucket", "--bucket", "b"}, want: "without a path"},
		"stray argument":     {args: []string{"--endpoint", "h:1", "--bucket", "b", "/gnu/store/x"}, want: "unexpected arguments"},
		"zero grace":         {args: []string{"--endpoint", "h:1", "--bucket", "b", "--grace", "0s"}, want: "--grace must be positive"},
		"bad glob":           {args: []string{"--endpoint", "h:1", "--bucket", "b", "--keep-name", "[x"}, want: "NameGlobs"},
		"unknown flag":       {args: []string{"--frobnicate"}, want: "flag provided but not defined"},
		"missing roots file": {args: []string{"--endpoint", "h:1", "--bucket", "b", "--roots-file", "/nonexistent/roots"}, want: "--roots-file"},
		"unknown policy":     {args: []string{"--endpoint", "h:1", "--bucket", "b", "--policy", "age"}, want: "--policy"},
		"roots, none declared": {args: []string{"--endpoint", "h:1", "--bucket", "b", "--policy", "roots", "--without-farm-roots"},
			want: "needs a declared keep policy"},
		"roots without the farm's": {args: []string{"--endpoint", "h:1", "--bucket", "b", "--policy", "roots", "--keep-max-age", "1h"},
			want: "does not know the farm's live Builds"},
		"keep rule, orphans policy": {args: []string{"--endpoint", "h:1", "--bucket", "b", "--roots-key", "gc/roots"},
			want: "with policy orphans"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			err := Command(context.Background(), tc.args, &out, Deps{Getenv: func(string) string { return "" }})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	if err := Command(context.Background(), []string{"-h"}, &bytes.Buffer{}, Deps{}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
}

func hashOf(name string) string {
	sum := sha256.Sum256([]byte(name))
	return nixbase32.EncodeToString(sum[:20])
}

func storePath(name string) string { return "/gnu/store/" + hashOf(name) + "-" + name }

func TestCommandAgainstMinIO(t *testing.T) {
	m := testbed.StartMinIO(t)
	m.MakeBucket(t, "subs")
	ctx := context.Background()
	put := func(key string, data []byte) {
		if _, err := m.Client.PutObject(ctx, "subs", key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	publish := func(name string, refs ...string) {
		sum := sha256.Sum256([]byte(name))
		key := "nar/none/" + nixbase32.EncodeToString(sum[:]) + ".nar"
		put(key, []byte(name))
		ni := &narinfo.NarInfo{StorePath: storePath(name), URL: key, Compression: "none", NarHash: nar.FormatHash(sum[:]), NarSize: uint64(len(name))}
		for _, r := range refs {
			ni.References = append(ni.References, hashOf(r)+"-"+r)
		}
		put(hashOf(name)+".narinfo", ni.Bytes())
	}
	publish("base")
	publish("from-builds", "base")
	publish("from-file")
	publish("guile-3.0")
	publish("garbage")
	rootsFile := filepath.Join(t.TempDir(), "roots")
	if err := os.WriteFile(rootsFile, []byte("# pinned\n"+storePath("from-file")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"AWS_ACCESS_KEY_ID": m.AccessKey, "AWS_SECRET_ACCESS_KEY": m.SecretKey}
	var told []string
	deps := Deps{
		Roots:     gc.StaticRoots{storePath("from-builds")},
		Getenv:    func(k string) string { return env[k] },
		OnDeleted: func(p, _ []string) { told = append(told, p...) },
	}
	args := []string{"--endpoint", m.URL, "--bucket", "subs", "--grace", "1ms", "--policy", "roots", "--roots-file", rootsFile, "--keep-name", "guile-*"}
	count := func() int {
		n := 0
		for o := range m.Client.ListObjects(ctx, "subs", minio.ListObjectsOptions{Recursive: true}) {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
			n++
		}
		return n
	}

	var out bytes.Buffer
	if err := Command(ctx, append(slices.Clone(args), "--dry-run"), &out, deps); err != nil {
		t.Fatal(err)
	}
	if count() != 10 {
		t.Fatalf("the dry run deleted objects:\n%s", out.String())
	}
	want := "would-delete narinfo " + hashOf("garbage") + ".narinfo unreachable " + storePath("garbage")
	if !strings.Contains(out.String(), want) || strings.Count(out.String(), "would-delete") != 2 {
		t.Errorf("dry-run output lacks %q or has more:\n%s", want, out.String())
	}

	out.Reset()
	if err := Command(ctx, args, &out, deps); err != nil {
		t.Fatal(err)
	}
	if count() != 8 || !strings.Contains(out.String(), "deleted narinfo "+hashOf("garbage")+".narinfo") {
		t.Errorf("after GC: %d objects, want 8\n%s", count(), out.String())
	}
	if !slices.Equal(told, []string{storePath("garbage")}) {
		t.Errorf("OnDeleted got %v", told)
	}

	// Anonymous: the bucket refuses listing, and the error says what to check.
	env = map[string]string{}
	err := Command(ctx, args, &out, deps)
	if err == nil || !strings.Contains(err.Error(), "access key") {
		t.Errorf("anonymous run: %v", err)
	}
}
