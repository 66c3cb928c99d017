package health

import (
	"context"
	"sync"
	"time"
)

// slack is how early any probe may be dispatched, so that the scheduler wakes at most about once
// per slack however many probes are due.
const slack = time.Millisecond

// maxWindow bounds how early a periodic probe may be dispatched (see check.window): the wake-ups,
// not the probes, are what a sidecar's prober spends its CPU on at tens to thousands of instances
// (each costs several context switches and the Go scheduler's spinning), so the probes due within
// a window share one wake-up. A probe is never dispatched later for it: no scheduling lag is added.
const maxWindow = 20 * time.Millisecond

// sched is a central timer heap of probers keyed by their next probe time. It wakes when the
// first is due and dispatches it with every next one whose window has begun. A prober is either
// in the heap (idx >= 0) or not (in flight, or stopped): never twice, so that at most one probe
// of an instance is in flight.
type sched struct {
	epoch time.Time
	mu    sync.Mutex
	heap  []*prober
	wake  chan struct{}
}

func newSched() *sched { return &sched{epoch: time.Now(), wake: make(chan struct{}, 1)} }

// now is the monotonic time since the scheduler's epoch, in ns.
func (s *sched) now() int64 { return int64(time.Since(s.epoch)) }

// add puts p, which must not be in the heap, in it with its next probe at due.
func (s *sched) add(p *prober, due int64) { s.addWindow(p, due, 0) }

// addWindow puts p, which must not be in the heap, in it with its next probe at due, which may
// be dispatched as early as window before due if other probes are dispatched then.
func (s *sched) addWindow(p *prober, due int64, window time.Duration) {
	s.mu.Lock()
	p.due, p.at = due, due-int64(window)
	p.idx = len(s.heap)
	s.heap = append(s.heap, p)
	s.up(p.idx)
	top := s.heap[0] == p
	s.mu.Unlock()
	if top {
		s.signal()
	}
}

// advance moves p's next probe to due if p is in the heap and due is earlier; it reports
// whether p is in the heap.
func (s *sched) advance(p *prober, due int64) bool {
	s.mu.Lock()
	if p.idx < 0 {
		s.mu.Unlock()
		return false
	}
	top := false
	if due < p.due {
		p.due, p.at = due, min(p.at, due)
		s.up(p.idx)
		top = s.heap[0] == p
	}
	s.mu.Unlock()
	if top {
		s.signal()
	}
	return true
}

// remove takes p out of the heap if it is there.
func (s *sched) remove(p *prober) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := p.idx
	if i < 0 {
		return
	}
	n := len(s.heap) - 1
	if i != n {
		s.swap(i, n)
	}
	s.heap[n] = nil
	s.heap = s.heap[:n]
	p.idx = -1
	if i != n {
		if !s.down(i) {
			s.up(i)
		}
	}
}

func (s *sched) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run dispatches each prober when it is due until ctx ends; dispatch gets the scheduling lag
// (how late after its due time a probe is dispatched; an early one has none).
func (s *sched) run(ctx context.Context, dispatch func(p *prober, lag time.Duration)) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var batch []*prober
	var lags []time.Duration
	for {
		now := s.now()
		var wait time.Duration
		batch, lags, wait = s.popDue(now, batch, lags)
		for i, p := range batch {
			dispatch(p, lags[i])
			batch[i] = nil
		}
		batch, lags = batch[:0], lags[:0]
		if ctx.Err() != nil {
			return
		}
		if wait >= 0 {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// popDue takes the probers that may be probed by now (plus slack) out of the heap, in order of
// due time, with their lag, and returns how long to wait for the next one due (-1: none).
func (s *sched) popDue(now int64, batch []*prober, lags []time.Duration) ([]*prober, []time.Duration, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.heap) > 0 && s.heap[0].at <= now+int64(slack) {
		p := s.heap[0]
		p.slot = p.due
		lags = append(lags, time.Duration(max(now-p.due, 0)))
		n := len(s.heap) - 1
		s.swap(0, n)
		s.heap[n] = nil
		s.heap = s.heap[:n]
		p.idx = -1
		s.down(0)
		batch = append(batch, p)
	}
	if len(s.heap) == 0 {
		return batch, lags, -1
	}
	return batch, lags, time.Duration(s.heap[0].due - now)
}

func (s *sched) swap(i, j int) {
	s.heap[i], s.heap[j] = s.heap[j], s.heap[i]
	s.heap[i].idx = i
	s.heap[j].idx = j
}

func (s *sched) up(j int) {
	for j > 0 {
		i := (j - 1) / 2
		if s.heap[i].due <= s.heap[j].due {
			break
		}
		s.swap(i, j)
		j = i
	}
}

func (s *sched) down(i0 int) bool {
	i, n := i0, len(s.heap)
	for {
		j := 2*i + 1
		if j >= n || j < 0 {
			break
		}
		if r := j + 1; r < n && s.heap[r].due < s.heap[j].due {
			j = r
		}
		if s.heap[i].due <= s.heap[j].due {
			break
		}
		s.swap(i, j)
		i = j
	}
	return i > i0
}
