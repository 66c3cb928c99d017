package consul

import (
	"cmp"
	"context"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/vigil-sidecar/vigil/discovery"
)

// watcher runs blocking queries for one upstream in one datacenter.
type watcher struct {
	client   *api.Client
	cfg      *Config
	log      *slog.Logger
	upstream string // vigil's name of the upstream
	service  string // Consul's name of the service
	tag      string
	dc       string // "" for the agent's own datacenter
	failover int    // 0: local, n: the n-th fallback datacenter
	source   string // stable, e.g. "api/dc1"

	mu      sync.Mutex
	synced  time.Time // last successful sync
	failing bool      // the last query failed
}

// event is a watcher's report: a successful sync, or (with ok false) a failure.
type event struct {
	w       *watcher
	ok      bool
	stale   bool // the watch lost Consul: group is the last known, Synced its last success
	group   discovery.Group
	changed bool // the instances differ from the previous sync
	// recovered is true on the first success after a failure (the group is in sync again).
	recovered bool
	seen      time.Time // when the response arrived
}

func (w *watcher) dcLabel() string {
	if w.dc == "" {
		return "local"
	}
	return w.dc
}

func (w *watcher) lastSync() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.synced
}

// staleness is 0 while the watch is in sync (its last query succeeded and the next one waits
// on Consul), else the time since its last successful sync (since start if it never had one).
func (w *watcher) staleness(now time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.failing {
		return 0
	}
	return now.Sub(w.synced)
}

// run queries until ctx ends, reporting each result on events.
func (w *watcher) run(ctx context.Context, events chan<- event) {
	w.mu.Lock()
	w.synced = time.Now() // staleness counts from the start until the first sync
	w.mu.Unlock()
	var (
		index      uint64
		highest    uint64 // index of the last answer accepted (kept across failures)
		lastStart  time.Time
		failures   int
		consistent bool // ask the leader, consistently: the stale answer was too old, or Consul failed
		last       []discovery.Instance
		first      = true
	)
	for {
		if !sleep(ctx, w.cfg.MinInterval-time.Since(lastStart)) {
			return
		}
		lastStart = time.Now()
		q := &api.QueryOptions{
			Datacenter:        w.dc,
			WaitIndex:         index,
			WaitTime:          w.cfg.WaitTime,
			AllowStale:        w.cfg.AllowStale && !consistent,
			RequireConsistent: consistent,
			// The agent's cache (or view) answers the blocking queries; the first read goes to the
			// servers, so that a watch starts from their state, not from an entry just being filled.
			// Consul refuses ?cached with ?consistent.
			UseCache: w.cfg.UseCache && !consistent && index > 0,
		}
		qctx, qcancel := context.WithTimeout(ctx, queryTimeout(w.cfg.WaitTime))
		entries, meta, err := w.client.Health().Service(w.service, w.tag, false, q.WithContext(qctx))
		qcancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			// The first answer after a failure is a consistent read: a Consul server that has
			// just restarted answers stale reads from whatever it has applied so far, which may
			// be an empty catalog, until it has caught up with the leader.
			consistent = true
			// Read afresh once it answers again: Consul may have restarted with lower indexes,
			// and a blocking query on the old one could wait a whole wait_time.
			index = 0
			w.mu.Lock()
			w.failing = true
			w.mu.Unlock()
			if failures == 1 {
				w.log.Warn("consul: watch failing; keeping the last known instances",
					"upstream", w.upstream, "datacenter", w.dcLabel(), "err", err)
				ev := event{w: w}
				if !first { // the same instances, now marked with the time of their last sync
					w.mu.Lock()
					synced := w.synced
					w.mu.Unlock()
					ev.stale = true
					ev.group = discovery.Group{Source: w.source, Upstream: w.upstream, Instances: last, Synced: synced}
				}
				if !send(ctx, events, ev) {
					return
				}
			}
			if !sleep(ctx, backoff(w.cfg.BackoffBase, w.cfg.BackoffMax, failures)) {
				return
			}
			continue
		}
		// An answer from the agent's streaming backend (its materialized view, fed by a server's event
		// stream) carries no leader contact: KnownLeader is false and LastContact 0 by construction.
		streamed := meta.QueryBackend == "streaming"
		if !consistent && w.cfg.AllowStale && (w.cfg.MaxStale > 0 && meta.LastContact > w.cfg.MaxStale ||
			!meta.KnownLeader && !streamed || meta.LastIndex < highest) {
			// Too old, from a server that knows no leader, or behind what was already seen (a
			// restarted server catching up): the leader answers instead.
			w.log.Debug("consul: stale answer not trusted, asking the leader", "upstream", w.upstream,
				"datacenter", w.dcLabel(), "last_contact", meta.LastContact, "known_leader", meta.KnownLeader,
				"index", meta.LastIndex, "seen", highest)
			consistent = true
			continue
		}
		highest = meta.LastIndex
		consistent = false
		recovered := failures > 0
		if recovered {
			w.log.Info("consul: watch recovered", "upstream", w.upstream, "datacenter", w.dcLabel(), "failures", failures)
		}
		failures = 0
		index = nextIndex(index, meta.LastIndex)
		now := time.Now()
		w.mu.Lock()
		w.synced, w.failing = now, false
		w.mu.Unlock()
		ins := w.instances(entries)
		changed := first || !reflect.DeepEqual(ins, last)
		if changed && w.log.Enabled(ctx, slog.LevelDebug) {
			byHealth := map[string]int{}
			for _, in := range ins {
				byHealth[in.Health.String()]++
			}
			w.log.Debug("consul: instances changed", "upstream", w.upstream, "datacenter", w.dcLabel(),
				"instances", len(ins), "health", byHealth, "index", meta.LastIndex, "known_leader", meta.KnownLeader)
		}
		first, last = false, ins
		g := discovery.Group{Source: w.source, Upstream: w.upstream, Instances: ins} // Synced zero: in sync
		if !send(ctx, events, event{w: w, ok: true, group: g, changed: changed, recovered: recovered, seen: now}) {
			return
		}
	}
}

// instances turns Consul's answer into instances, sorted by ID.
func (w *watcher) instances(entries []*api.ServiceEntry) []discovery.Instance {
	out := make([]discovery.Instance, 0, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil || e.Node == nil {
			continue
		}
		dc := e.Node.Datacenter
		if dc == "" {
			dc = w.dc
		}
		in := discovery.Instance{
			ID:         dc + "/" + e.Node.Node + "/" + e.Service.ID,
			Address:    e.Service.Address,
			Port:       e.Service.Port,
			Datacenter: dc,
			Tags:       slices.Clone(e.Service.Tags),
			Failover:   w.failover,
		}
		if in.Address == "" {
			in.Address = e.Node.Address
		}
		if len(e.Service.Meta) > 0 {
			in.Meta = e.Service.Meta
		}
		if k := w.cfg.ZoneMetaKey; k != "" {
			in.Zone = e.Service.Meta[k]
			if in.Zone == "" {
				in.Zone = e.Node.Meta[k]
			}
		}
		status := e.Checks.AggregatedStatus()
		if status == api.HealthCritical && nodeOnlyCritical(e.Checks) {
			in.Health = discovery.NodeCritical
			status = ""
		}
		switch status {
		case api.HealthMaint:
			in.Health = discovery.Maintenance
		case api.HealthCritical:
			in.Health = discovery.Critical
		case api.HealthWarning:
			if !w.cfg.WarningIsPassing {
				in.Health = discovery.Critical
			}
		}
		in.Weight = e.Service.Weights.Passing
		if status == api.HealthWarning && e.Service.Weights.Warning > 0 {
			in.Weight = e.Service.Weights.Warning
		}
		// Envoy refuses an endpoint set whose weights sum beyond 2^32, and SRV carries 16 bits.
		in.Weight = min(max(in.Weight, 1), maxWeight)
		if in.Address == "" || in.Port < 1 || in.Port > 65535 {
			continue // nothing to probe or serve (e.g. a service registered without a port)
		}
		out = append(out, in)
	}
	slices.SortStableFunc(out, func(a, b discovery.Instance) int { return cmp.Compare(a.ID, b.ID) })
	// One instance per ID, the first Consul listed: the ID keys health and the table.
	return slices.CompactFunc(out, func(a, b discovery.Instance) bool { return a.ID == b.ID })
}

// nodeOnlyCritical reports whether the only critical check is the agent's own serfHealth: Consul
// cannot reach the node's agent by gossip (it is restarting, or partitioned from the servers),
// which says nothing of the service that vigil probes itself.
func nodeOnlyCritical(checks api.HealthChecks) bool {
	serf := false
	for _, c := range checks {
		if c.Status != api.HealthCritical {
			continue
		}
		if c.CheckID != "serfHealth" || c.ServiceID != "" {
			return false
		}
		serf = true
	}
	return serf
}

// maxWeight is the largest instance weight taken from Consul.
const maxWeight = 65535

// callTimeout bounds a request that does not block on Consul's side; queryTimeout bounds a
// blocking query that waits up to wait (Consul adds up to wait/16 of jitter). Past them, an agent
// that accepts connections but never answers counts as a failure.
const callTimeout = 5 * time.Second

func queryTimeout(wait time.Duration) time.Duration { return wait + wait/16 + callTimeout }

// nextIndex is the index of the next blocking query after an answer at index got, as Consul's
// blocking-query guide asks: start over (0, no blocking) when the index went backwards (a restored
// snapshot, a new cluster), and never block on an index below 1 (that would return at once).
func nextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		return 0
	case got < 1:
		return 1
	default:
		return got
	}
}

// backoff returns the delay after the n-th consecutive failure: exponential from base, capped at
// max, with "equal jitter" (half fixed, half random) so that many watchers do not retry in step.
func backoff(base, maxd time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < maxd; i++ {
		d *= 2
	}
	d = min(d, maxd)
	half := d / 2
	return half + rand.N(half+1)
}

// sleep waits d or until ctx ends; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func send[T any](ctx context.Context, ch chan<- T, v T) bool {
	select {
	case ch <- v:
		return true
	case <-ctx.Done():
		return false
	}
}
