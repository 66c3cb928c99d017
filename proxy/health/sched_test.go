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

// Probes whose window has begun share the wake-up of the first one due, with no lag; a probe
// without a window (an edge probe) waits for its due time.
func TestSchedPopDueWindow(t *testing.T) {
	s := newSched()
	first, early, edge, late := &prober{idx: -1}, &prober{idx: -1}, &prober{idx: -1}, &prober{idx: -1}
	ms := func(n int) int64 { return int64(time.Duration(n) * time.Millisecond) }
	s.addWindow(first, ms(10), 20*time.Millisecond)
	s.addWindow(early, ms(25), 20*time.Millisecond) // window from 5ms
	s.add(edge, ms(28))                             // no window
	s.addWindow(late, ms(40), 20*time.Millisecond)  // window from 20ms
	got, lags, wait := s.popDue(ms(12), nil, nil)
	if len(got) != 2 || got[0] != first || got[1] != early || lags[0] != 2*time.Millisecond || lags[1] != 0 {
		t.Fatalf("got %d probers, lags %v", len(got), lags)
	}
	if got[1].slot != ms(25) {
		t.Errorf("slot %v, want the due time 25ms", time.Duration(got[1].slot))
	}
	if wait != 16*time.Millisecond { // until edge is due, not until late's window begins
		t.Errorf("wait %v, want 16ms", wait)
	}
	got, _, _ = s.popDue(ms(28), got[:0], lags[:0])
	if len(got) != 2 || got[0] != edge || got[1] != late {
		t.Fatalf("at 28ms got %d probers", len(got))
	}
}

func TestCheckWindow(t *testing.T) {
	for _, c := range []struct {
		interval time.Duration
		jitter   float64
		want     time.Duration
	}{
		{time.Second, 0.1, maxWindow},
		{200 * time.Millisecond, 0.1, 5 * time.Millisecond},
		{time.Second, 0, slack},
	} {
		chk := &check{cfg: CheckConfig{Interval: c.interval, UnhealthyInterval: c.interval, Jitter: c.jitter}}
		if got := chk.window(); got != c.want {
			t.Errorf("interval %v jitter %v: window %v, want %v", c.interval, c.jitter, got, c.want)
		}
	}
}
