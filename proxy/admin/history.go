package admin

import (
	"sync"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// Bounds of the history kept for the dashboard and `vigil status`.
const (
	samplesPerInstance     = 30 // recent probe results per instance (sparkline)
	transitionsPerInstance = 10 // recent transitions per instance
	recentTransitions      = 50 // recent transitions of all instances
)

// Sample is one probe result as seen by the admin server.
type Sample struct {
	At        time.Time `json:"at"`
	LatencyMS float64   `json:"latency_ms"`
	Error     string    `json:"error,omitempty"`
}

// Transition is one change of an instance's state with its cause.
type Transition struct {
	At       time.Time `json:"at"`
	Upstream string    `json:"upstream"`
	ID       string    `json:"id"`
	From     string    `json:"from"` // "" when the instance appeared
	To       string    `json:"to"`   // "removed" when it left the membership
	Cause    string    `json:"cause,omitempty"`
}

// ring is a bounded list that keeps the newest n items.
type ring[T any] struct {
	buf  []T
	next int
}

func (r *ring[T]) add(v T, n int) {
	if len(r.buf) < n {
		r.buf = append(r.buf, v)
		return
	}
	r.buf[r.next] = v
	r.next = (r.next + 1) % n
}

// list returns the items, oldest first, as a new slice.
func (r *ring[T]) list() []T {
	out := make([]T, 0, len(r.buf))
	out = append(out, r.buf[r.next:]...)
	return append(out, r.buf[:r.next]...)
}

type instHistory struct {
	probes      uint64 // probe count at the last sample
	samples     ring[Sample]
	transitions ring[Transition]
}

// history records probe results and transitions from the table's snapshots: it samples the
// instances' live statistics (never touching the probe path) and compares snapshots.
type history struct {
	mu     sync.Mutex
	last   *table.Snapshot
	inst   map[discovery.Key]*instHistory
	recent ring[Transition]
}

func newHistory() *history { return &history{inst: map[discovery.Key]*instHistory{}} }

// observe records the transitions between the last observed snapshot and snap, and a sample of
// every instance whose probe count moved. It reports whether anything was recorded.
func (h *history) observe(snap *table.Snapshot, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	changed := false
	if snap != h.last {
		changed = h.transitions(snap, now)
		h.last = snap
	}
	for _, name := range snap.Names {
		u := snap.Upstreams[name]
		for i := range u.Instances {
			in := &u.Instances[i]
			if in.Stats == nil {
				continue
			}
			ih := h.get(discovery.Key{Upstream: name, ID: in.ID})
			st := in.Stats.Load()
			if st.Probes == ih.probes {
				continue
			}
			ih.probes = st.Probes
			ih.samples.add(Sample{At: st.LastProbe, LatencyMS: float64(st.Latency) / 1e6, Error: st.LastError}, samplesPerInstance)
			changed = true
		}
	}
	return changed
}

func (h *history) get(k discovery.Key) *instHistory {
	ih := h.inst[k]
	if ih == nil {
		ih = &instHistory{}
		h.inst[k] = ih
	}
	return ih
}

// transitions compares snap with h.last. Called with mu held.
func (h *history) transitions(snap *table.Snapshot, now time.Time) bool {
	changed := false
	add := func(t Transition) {
		h.get(discovery.Key{Upstream: t.Upstream, ID: t.ID}).transitions.add(t, transitionsPerInstance)
		h.recent.add(t, recentTransitions)
		changed = true
	}
	var old map[string]*table.Upstream
	if h.last != nil {
		old = h.last.Upstreams
	}
	for _, name := range snap.Names {
		u, ou := snap.Upstreams[name], old[name]
		if u == ou {
			continue // shared between snapshots: unchanged
		}
		prev := map[string]*table.Instance{}
		if ou != nil {
			for i := range ou.Instances {
				prev[ou.Instances[i].ID] = &ou.Instances[i]
			}
		}
		for i := range u.Instances {
			in := &u.Instances[i]
			p := prev[in.ID]
			delete(prev, in.ID)
			if p != nil && p.State == in.State {
				continue
			}
			t := Transition{At: in.Since, Upstream: name, ID: in.ID, To: in.State.String(), Cause: cause(in)}
			if t.At.IsZero() || t.At.After(now) {
				t.At = now
			}
			if p != nil {
				t.From = p.State.String()
			}
			add(t)
		}
		for id, p := range prev {
			add(Transition{At: now, Upstream: name, ID: id, From: p.State.String(), To: "removed", Cause: "left the membership"})
		}
	}
	for name, ou := range old {
		if snap.Upstreams[name] != nil {
			continue
		}
		for i := range ou.Instances {
			p := &ou.Instances[i]
			add(Transition{At: now, Upstream: name, ID: p.ID, From: p.State.String(), To: "removed", Cause: "upstream removed"})
		}
	}
	// Forget instances no longer known, so that the history stays bounded by the membership.
	for k := range h.inst {
		if u := snap.Upstreams[k.Upstream]; u == nil || !hasInstance(u, k.ID) {
			delete(h.inst, k)
		}
	}
	return changed
}

func hasInstance(u *table.Upstream, id string) bool {
	for i := range u.Instances {
		if u.Instances[i].ID == id {
			return true
		}
	}
	return false
}

func cause(in *table.Instance) string {
	switch {
	case in.Reason != "":
		if in.Flapping {
			return "flapping: " + in.Reason
		}
		return in.Reason
	case in.State == table.Healthy:
		return "probes passing"
	case in.State == table.Unknown:
		return "awaiting its first probe"
	}
	return ""
}

// instance returns copies of an instance's recent samples and transitions.
func (h *history) instance(k discovery.Key) ([]Sample, []Transition) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ih := h.inst[k]
	if ih == nil {
		return nil, nil
	}
	return ih.samples.list(), ih.transitions.list()
}

// recentList returns the recent transitions of all instances, oldest first.
func (h *history) recentList() []Transition {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.recent.list()
}
