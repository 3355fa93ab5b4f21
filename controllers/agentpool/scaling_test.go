package agentpool

import (
	"fmt"
	"reflect"
	"testing"
	"time"
)

func TestNextStep(t *testing.T) {
	now := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	old := now.Add(-time.Hour)
	idle := func(o int) member {
		return member{Name: fmt.Sprintf("p-%d", o), Ordinal: o, Current: true, ReadySince: old, HasLease: true, Quiesced: true}
	}
	drained := func(o int, why string) member { m := idle(o); m.Drain = why; return m }
	busy := func(o int, why string) member { m := drained(o, why); m.Busy = true; return m }
	for _, tc := range []struct {
		name       string
		in         stepInput
		replicas   int32
		drain      map[string]string
		deletePods []string
	}{
		{"scale up at once", stepInput{Replicas: 1, Desired: 4, Members: []member{idle(0)}}, 4, map[string]string{}, nil},
		{"scale up cancels drains", stepInput{Replicas: 2, Desired: 2, Members: []member{idle(0), drained(1, DrainScaleDown)}}, 2, map[string]string{}, nil},
		{"scale down drains first", stepInput{Replicas: 3, Desired: 1, Members: []member{idle(0), idle(1), idle(2)}}, 3,
			map[string]string{"p-1": DrainScaleDown, "p-2": DrainScaleDown}, nil},
		{"drained idle agents go", stepInput{Replicas: 3, Desired: 1, Members: []member{idle(0), drained(1, DrainScaleDown), drained(2, DrainScaleDown)}}, 1,
			map[string]string{"p-1": DrainScaleDown, "p-2": DrainScaleDown}, nil},
		{"a busy top agent holds the size", stepInput{Replicas: 3, Desired: 1, Members: []member{idle(0), drained(1, DrainScaleDown), busy(2, DrainScaleDown)}}, 3,
			map[string]string{"p-1": DrainScaleDown, "p-2": DrainScaleDown}, nil},
		{"not quiesced yet", stepInput{Replicas: 2, Desired: 1, Members: []member{idle(0), func() member { m := drained(1, DrainScaleDown); m.Quiesced = false; return m }()}}, 2,
			map[string]string{"p-1": DrainScaleDown}, nil},
		{"within idle grace", stepInput{Replicas: 2, Desired: 1, IdleGrace: time.Minute, Members: []member{idle(0), func() member {
			m := drained(1, DrainScaleDown)
			m.ReadySince = now.Add(-10 * time.Second)
			return m
		}()}}, 2, map[string]string{"p-1": DrainScaleDown}, nil},
		{"unregistered and failed pods go at once", stepInput{Replicas: 3, Desired: 1, Members: []member{idle(0), {Name: "p-1", Ordinal: 1}, {Name: "p-2", Ordinal: 2, Failed: true, HasLease: true}}}, 1,
			map[string]string{"p-1": DrainScaleDown, "p-2": DrainScaleDown}, nil},
		{"missing pods do not hold a scale-down", stepInput{Replicas: 3, Desired: 0, Members: []member{drained(0, DrainScaleDown)}}, 0,
			map[string]string{"p-0": DrainScaleDown}, nil},
		{"roll one at a time", stepInput{Replicas: 3, Desired: 3, Members: []member{
			func() member { m := idle(0); m.Current = false; return m }(),
			func() member { m := idle(1); m.Current = false; return m }(), idle(2)}}, 3,
			map[string]string{"p-1": DrainTemplateChange}, nil},
		{"a drained old agent is replaced", stepInput{Replicas: 2, Desired: 2, Members: []member{
			func() member { m := idle(0); m.Current = false; return m }(),
			func() member { m := drained(1, DrainTemplateChange); m.Current = false; return m }()}}, 2,
			map[string]string{"p-1": DrainTemplateChange}, []string{"p-1"}},
		{"a busy old agent finishes first", stepInput{Replicas: 1, Desired: 1, Members: []member{
			func() member { m := busy(0, DrainTemplateChange); m.Current = false; return m }()}}, 1,
			map[string]string{"p-0": DrainTemplateChange}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.in.Now = now
			got := nextStep(tc.in)
			if got.Replicas != tc.replicas || !reflect.DeepEqual(got.Drain, tc.drain) || !reflect.DeepEqual(got.Delete, tc.deletePods) {
				t.Errorf("got replicas %d drain %v delete %v; want %d %v %v", got.Replicas, got.Drain, got.Delete, tc.replicas, tc.drain, tc.deletePods)
			}
		})
	}
}
