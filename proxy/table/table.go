// Package table holds the single, versioned view of upstream instances that every frontend reads.
package table

import (
	"maps"
	"reflect"
	"sync"
	"sync/atomic"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// Config is the table's policy configuration.
type Config struct {
	// Zone is the local zone, for zone preference.
	Zone string
	// Default is the policy of upstreams without their own.
	Default Policy
	// Upstreams are per-upstream policies.
	Upstreams map[string]Policy
}

func (c *Config) policy(name string) Policy {
	if p, ok := c.Upstreams[name]; ok {
		return p
	}
	return c.Default
}

// Table turns membership and health into snapshots. Writers serialize on a mutex;
// readers load the current snapshot through an atomic pointer and never lock.
type Table struct {
	cur atomic.Pointer[Snapshot]

	mu       sync.Mutex
	cfg      Config
	mem      discovery.Membership
	statuses map[discovery.Key]health.Status
	holds    map[string]map[string]Hold // upstream -> instance ID ("" for all) -> hold
	subs     map[chan struct{}]struct{}
	change   Change // the newest state change taken in
}

// New returns a Table holding an empty, not ready snapshot at version 1.
func New(cfg Config) *Table {
	t := &Table{
		cfg:      cfg,
		mem:      discovery.Membership{Upstreams: map[string]*discovery.Upstream{}},
		statuses: map[discovery.Key]health.Status{},
		subs:     map[chan struct{}]struct{}{},
	}
	t.cur.Store(&Snapshot{Version: 1, Upstreams: map[string]*Upstream{}})
	return t
}

// Snapshot returns the current snapshot.
func (t *Table) Snapshot() *Snapshot { return t.cur.Load() }

// Subscribe returns a channel that receives a value after each new snapshot (changes
// that come while the value is unread merge into it) and a function that cancels.
func (t *Table) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	t.mu.Lock()
	t.subs[ch] = struct{}{}
	t.mu.Unlock()
	return ch, func() {
		t.mu.Lock()
		delete(t.subs, ch)
		t.mu.Unlock()
	}
}

// SetConfig replaces the policies and rebuilds every upstream.
func (t *Table) SetConfig(cfg Config) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cfg = cfg
	t.rebuild(nil)
}

// SetMembership replaces the set of instances and their statuses.
func (t *Table) SetMembership(m discovery.Membership, statuses map[discovery.Key]health.Status) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.mem = m
	for k, s := range statuses {
		t.noteChange(t.statuses[k], s)
	}
	t.statuses = make(map[discovery.Key]health.Status, len(statuses))
	maps.Copy(t.statuses, statuses)
	t.rebuild(nil)
}

// SetStatus records a change in one instance's status and rebuilds its upstream only.
func (t *Table) SetStatus(k discovery.Key, s health.Status) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.mem.Upstreams[k.Upstream]; !ok {
		return
	}
	t.noteChange(t.statuses[k], s)
	t.statuses[k] = s
	t.rebuild([]string{k.Upstream})
}

// noteChange records a change of state from prev to s (a new instance's first Unknown is none).
// Called with mu held.
func (t *Table) noteChange(prev, s health.Status) {
	if prev.State == s.State || s.Since.IsZero() {
		return
	}
	t.change.Seq++
	if s.Since.After(t.change.At) {
		t.change.At = s.Since
	}
}

var _ health.Sink = (*Table)(nil)

// rebuild publishes a new snapshot in which the named upstreams (all when nil) are rebuilt
// and the others shared with the previous snapshot. Called with mu held.
func (t *Table) rebuild(only []string) {
	old := t.cur.Load()
	next := &Snapshot{Version: old.Version + 1, Upstreams: make(map[string]*Upstream, len(t.mem.Upstreams))}
	rebuild := func(name string, mu *discovery.Upstream) {
		u := build(mu, t.statuses, t.holds[name], t.cfg.policy(name), t.cfg.Zone, next.Version)
		if prev := old.Upstreams[name]; prev != nil && sameUpstream(prev, u) {
			// Unchanged but for the sync time: keep its version, so that frontends can skip it.
			c := *prev
			c.Synced = u.Synced
			u = &c
		}
		next.Upstreams[name] = u
	}
	if only == nil {
		for name, mu := range t.mem.Upstreams {
			rebuild(name, mu)
		}
	} else {
		maps.Copy(next.Upstreams, old.Upstreams)
		for _, name := range only {
			if mu, ok := t.mem.Upstreams[name]; ok {
				rebuild(name, mu)
			}
		}
	}
	next.Names = t.mem.Names()
	next.Ready = t.mem.Ready
	next.Change = t.change
	for _, u := range next.Upstreams {
		if !next.Ready {
			break
		}
		for i := range u.Instances {
			if u.Instances[i].State == Unknown {
				next.Ready = false
				break
			}
		}
	}
	t.cur.Store(next)
	for ch := range t.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// sameUpstream reports whether a and b differ in nothing but their version and sync time.
func sameUpstream(a, b *Upstream) bool {
	if a.Name != b.Name || a.Policy != b.Policy || a.Healthy != b.Healthy || a.Total != b.Total ||
		a.Panic != b.Panic || a.Failover != b.Failover || len(a.Instances) != len(b.Instances) {
		return false
	}
	for i := range a.Instances {
		x, y := &a.Instances[i], &b.Instances[i]
		if x.State != y.State || x.Reason != y.Reason || !x.Since.Equal(y.Since) || x.Flapping != y.Flapping ||
			x.Served != y.Served || x.Priority != y.Priority || x.Stats != y.Stats ||
			!reflect.DeepEqual(x.Instance, y.Instance) {
			return false
		}
	}
	return true
}
