package health

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestSchedHeap(t *testing.T) {
	s := newSched()
	r := rand.New(rand.NewPCG(1, 2))
	ps := make([]*prober, 2000)
	for i := range ps {
		ps[i] = &prober{idx: -1}
		s.add(ps[i], r.Int64N(int64(time.Hour)))
	}
	want := map[*prober]int64{}
	for i, p := range ps {
		switch i % 4 {
		case 0:
			s.remove(p)
			s.remove(p) // twice is harmless
			if p.idx != -1 {
				t.Fatal("removed prober still indexed")
			}
			continue
		case 1:
			if !s.advance(p, p.due/2) {
				t.Fatal("advance of a prober in the heap")
			}
		case 2:
			s.advance(p, p.due*2) // later: no change
		}
		want[p] = p.due
	}
	got, _, wait := s.popDue(int64(2*time.Hour), nil, nil)
	if wait != -1 || len(got) != len(want) {
		t.Fatalf("popped %d, want %d; wait %v", len(got), len(want), wait)
	}
	if !slices.IsSortedFunc(got, func(a, b *prober) int { return int(a.due - b.due) }) {
		t.Error("not popped in order")
	}
	for _, p := range got {
		if p.idx != -1 || want[p] != p.due {
			t.Fatalf("prober idx %d due %d, want due %d", p.idx, p.due, want[p])
		}
		if s.advance(p, 0) {
			t.Fatal("advance of a popped prober")
		}
	}
}

func TestSchedPopDueWaits(t *testing.T) {
	s := newSched()
	a, b := &prober{idx: -1}, &prober{idx: -1}
	s.add(a, int64(10*time.Millisecond))
	s.add(b, int64(50*time.Millisecond))
	got, lags, wait := s.popDue(int64(20*time.Millisecond), nil, nil)
	if len(got) != 1 || got[0] != a || lags[0] != 10*time.Millisecond || wait != 30*time.Millisecond {
		t.Errorf("got %d, lags %v, wait %v", len(got), lags, wait)
	}
}
