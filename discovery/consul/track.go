package consul

import (
	"context"
	"sync"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
)

// Table is what TrackTable reads: the table that the changes reach; cmd/vigil adapts vigil's
// table to it.
type Table interface {
	// View returns the current version of the table.
	View() TableView
	// Subscribe returns a channel that receives a value after each new version, and a
	// function that cancels.
	Subscribe() (<-chan struct{}, func())
}

// TableView is one immutable version of the table.
type TableView interface {
	// Instances returns the instances of upstream; ok is false when the table has no such upstream.
	Instances(upstream string) (instances []discovery.Instance, ok bool)
}

// tracker remembers changes handed to the Manager until a table snapshot shows them.
type tracker struct {
	m    *Metrics
	mu   sync.Mutex
	pend map[string]tracked // by source
	kick chan struct{}
}

type tracked struct {
	g    discovery.Group
	seen time.Time
}

// trackFor bounds how long a change is waited for in the table (it may never show, e.g. when
// another source names the same instance IDs).
const trackFor = time.Minute

func newTracker(m *Metrics) *tracker {
	return &tracker{m: m, pend: map[string]tracked{}, kick: make(chan struct{}, 1)}
}

func (t *tracker) sent(g discovery.Group, seen time.Time) {
	t.mu.Lock()
	t.pend[g.Source] = tracked{g: g, seen: seen}
	t.mu.Unlock()
	select {
	case t.kick <- struct{}{}:
	default:
	}
}

// check observes, for every pending change that s shows, the time from Consul's answer to now.
func (t *tracker) check(s TableView, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for src, p := range t.pend {
		if now.Sub(p.seen) > trackFor {
			delete(t.pend, src)
			continue
		}
		if shows(s, p.g) {
			t.m.changeToTbl.Observe(now.Sub(p.seen).Seconds())
			delete(t.pend, src)
		}
	}
}

// shows reports whether the snapshot holds exactly g's instances for g's datacenter and failover level.
func shows(s TableView, g discovery.Group) bool {
	ins, ok := s.Instances(g.Upstream)
	if !ok {
		return len(g.Instances) == 0
	}
	want := make(map[string]discovery.Health, len(g.Instances))
	for _, in := range g.Instances {
		want[in.ID] = in.Health
	}
	dc, level := "", -1
	if len(g.Instances) > 0 {
		dc, level = g.Instances[0].Datacenter, g.Instances[0].Failover
	}
	n := 0
	for i := range ins {
		in := &ins[i]
		h, ok := want[in.ID]
		switch {
		case ok && h == in.Health:
			n++
		case ok:
			return false
		case level >= 0 && in.Datacenter == dc && in.Failover == level:
			return false // an instance the change removed is still there
		}
	}
	return n == len(want)
}

// TrackTable measures the time from a change in Consul to the first snapshot of t that shows it
// (vigil_consul_change_to_table_seconds). It returns when ctx ends; cmd/vigil runs it next to Run.
func (d *Discovery) TrackTable(ctx context.Context, t Table) error {
	ch, cancel := t.Subscribe()
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		case <-d.tracker.kick:
		}
		d.tracker.check(t.View(), time.Now())
	}
}
