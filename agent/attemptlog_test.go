package agent

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/guixfarm/guix-farm/agent/buildstep"
)

func testutilCount(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

func newTestLog(store LogStore, limit int64) (*attemptLog, *clocktesting.FakeClock) {
	clk := clocktesting.NewFakeClock(t0)
	return newAttemptLog(store, "/gnu/store/x.drv", 2, limit, time.Second, clk, logr.Discard()), clk
}

func TestAttemptLogLimit(t *testing.T) {
	store := &fakeLogStore{}
	l, _ := newTestLog(store, 10)
	if n, err := l.Write([]byte("12345")); n != 5 || err != nil {
		t.Fatalf("write within the limit: %d, %v", n, err)
	}
	n, err := l.Write([]byte("67890abc"))
	if n != 5 || buildstep.KindOf(err) != buildstep.KindLogLimit {
		t.Fatalf("write across the limit: %d, %v; want 5 and a LogLimit error", n, err)
	}
	if n, err := l.Write([]byte("z")); n != 0 || buildstep.KindOf(err) != buildstep.KindLogLimit {
		t.Fatalf("write past the limit: %d, %v", n, err)
	}
	l.close(context.Background())
	ups := store.all()
	if len(ups) != 1 || ups[0] != (upload{drv: "/gnu/store/x.drv", attempt: 2, data: "1234567890", final: true}) {
		t.Fatalf("uploads %+v", ups)
	}
}

func TestAttemptLogFlushesWhileRunning(t *testing.T) {
	store := &fakeLogStore{}
	l, clk := newTestLog(store, 1<<20)
	l.Write([]byte("one\n"))
	eventually(t, "a periodic upload", func() bool {
		clk.Step(time.Second)
		return len(store.all()) > 0
	})
	// Nothing new: no upload however long it runs.
	for range 5 {
		clk.Step(time.Second)
	}
	l.Write([]byte("two\n"))
	l.close(context.Background())
	ups := store.all()
	if ups[0] != (upload{"/gnu/store/x.drv", 2, "one\n", false}) {
		t.Errorf("first upload %+v", ups[0])
	}
	if last := ups[len(ups)-1]; last != (upload{"/gnu/store/x.drv", 2, "one\ntwo\n", true}) {
		t.Errorf("final upload %+v", last)
	}
	// A tick still in flight may upload "two" before the final upload does, but never the same log twice.
	for i := 1; i < len(ups)-1; i++ {
		if ups[i].final || ups[i].data == ups[i-1].data {
			t.Errorf("uploads %+v", ups)
		}
	}
}

func TestAttemptLogTail(t *testing.T) {
	for name, store := range map[string]LogStore{"with a store": &fakeLogStore{}, "without": nil} {
		t.Run(name, func(t *testing.T) {
			l, _ := newTestLog(store, 1<<20)
			defer l.close(context.Background())
			for i := range 20 {
				fmt.Fprintf(l, "line %d\n", i)
			}
			l.Write([]byte("split "))
			l.Write([]byte("line\n"))
			l.Write([]byte(strings.Repeat("x", 2000) + "END\n"))
			l.Write([]byte("no newline yet"))
			got := l.tail()
			if len(got) != tailLines+1 {
				t.Fatalf("%d lines kept: %q", len(got), got)
			}
			if got[0] != "line 10" || got[9] != "line 19" || got[10] != "split line" || got[12] != "no newline yet" {
				t.Errorf("tail %q", got)
			}
			if long := got[11]; len(long) != maxTailLine || !strings.HasSuffix(long, "xEND") {
				t.Errorf("long line kept as %d bytes ending %q", len(long), long[len(long)-4:])
			}
		})
	}
}
