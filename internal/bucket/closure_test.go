package bucket

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/guixfarm/guix-farm/internal/nar"
)

func TestClosureOrder(t *testing.T) {
	sp := func(c byte) string { return "/gnu/store/" + strings.Repeat(string(c), 32) + "-x" }
	item := func(c byte, refs ...byte) StoreItem {
		it := StoreItem{StorePath: sp(c), References: []string{sp(c)}} // self-reference is ignored
		for _, r := range refs {
			it.References = append(it.References, sp(r))
		}
		return it
	}
	cases := map[string]struct {
		items []StoreItem
		order []int
		err   string
	}{
		"independent keep their order": {items: []StoreItem{item('a'), item('b')}, order: []int{0, 1}},
		"references first":             {items: []StoreItem{item('a', 'b'), item('b', 'c'), item('c')}, order: []int{2, 1, 0}},
		"outside refs ignored":         {items: []StoreItem{item('a', 'z'), item('b')}, order: []int{0, 1}},
		"cycle":                        {items: []StoreItem{item('a', 'b'), item('b', 'a')}, err: "cycle"},
		"duplicate":                    {items: []StoreItem{item('a'), item('a')}, err: "twice"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			order, _, _, err := closureOrder(c.items)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(c.order, order); d != "" {
				t.Errorf("order (-want +got):\n%s", d)
			}
		})
	}
}

// TestPublishClosure publishes a chain a → b → c (a refers to b, b to c),
// all at once, with c the slowest to read: the narinfos are still written
// c, b, a. A failed reference keeps its users' narinfos out.
func TestPublishClosure(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	sp := func(c byte) string { return "/gnu/store/" + strings.Repeat(string(c), 32) + "-item" }
	items := func(bad byte) []StoreItem {
		var its []StoreItem
		for i, c := range []byte("abc") {
			data := dumpBytes(t, tree(t, fmt.Sprintf("item %c", c)))
			h, _, _ := nar.Hash(bytes.NewReader(data))
			if c == bad {
				data = data[:len(data)-8]
			}
			it := withHash(readerItem(sp(c), data), h)
			if c == 'c' {
				open := it.Open
				it.Open = func(ctx context.Context) (io.ReadCloser, error) {
					time.Sleep(300 * time.Millisecond)
					return open(ctx)
				}
			} else {
				it.References = []string{sp("abc"[i+1])}
			}
			its = append(its, it)
		}
		return its
	}
	var mu sync.Mutex
	var written []string // narinfo PUTs, in order
	cfg := e.cfg
	cfg.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, ".narinfo") {
			mu.Lock()
			written = append(written, path.Base(r.URL.Path)[:1])
			mu.Unlock()
		}
		return http.DefaultTransport.RoundTrip(r)
	})
	pub, err := NewPublisher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := pub.PublishClosure(ctx, items(0), 3)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"c", "b", "a"}, written); d != "" {
		t.Errorf("narinfo order (-want +got):\n%s", d)
	}
	for i, r := range res {
		if r.NarInfo == nil || r.NarInfo.StorePath != sp("abc"[i]) {
			t.Fatalf("result %d: %+v", i, r)
		}
	}

	e2 := newEnvOn(t, e.m)
	_, err = e2.pub.PublishClosure(ctx, items('c'), 3)
	if err == nil || !strings.Contains(err.Error(), "failed to publish") || !errors.Is(err, nar.ErrCorrupt) {
		t.Fatalf("error %v, want c corrupt and its users refused", err)
	}
	for _, k := range e2.objects(t) {
		if strings.HasSuffix(k, ".narinfo") {
			t.Errorf("narinfo %s written although its closure failed", k)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
