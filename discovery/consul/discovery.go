package consul

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/field"
)

// Options configures a Discovery.
type Options struct {
	// Config is the connection and watch configuration.
	Config Config
	// Upstreams maps each vigil upstream name to its Consul service.
	Upstreams map[string]Upstream
	// Client talks to the local agent (NewClient); required.
	Client *api.Client
	// Metrics are shared with the Registration (NewMetrics); nil: not exported.
	Metrics *Metrics
	// Logger receives log lines; nil discards them.
	Logger *slog.Logger
}

// Discovery watches the instances of upstreams in Consul: one blocking-query watch per upstream
// and datacenter (the local one, then each fallback), and optionally the upstreams themselves
// through a filter over the catalog. It never drops instances because Consul cannot be reached.
type Discovery struct {
	o   Options
	log *slog.Logger
	m   *Metrics

	tracker *tracker
	updates chan map[string]Upstream // from Set, to Run
}

// NewDiscovery returns a Discovery for o.
func NewDiscovery(o Options) (*Discovery, error) {
	if o.Client == nil {
		return nil, errors.New("consul: discovery needs a client")
	}
	d := &Discovery{o: o, log: o.Logger, m: o.Metrics}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.m == nil {
		d.m = NewMetrics(nil)
	}
	d.tracker = newTracker(d.m)
	d.updates = make(chan map[string]Upstream, 1)
	return d, nil
}

// Set replaces the configured upstreams (on a configuration reload): watches of upstreams that
// are gone or changed stop (their instances are removed), new ones start. Safe while Run runs.
func (d *Discovery) Set(ups map[string]Upstream) {
	select { // replace an unread older value
	case <-d.updates:
	default:
	}
	d.updates <- ups
}

var _ discovery.Discoverer = (*Discovery)(nil)

// watchers returns the watches of one upstream: its datacenter first, then each fallback.
func (d *Discovery) watchers(name string, u Upstream) []*watcher {
	svc := u.Service
	if svc == "" {
		svc = name
	}
	dc := u.Datacenter
	if dc == "" {
		dc = d.o.Config.Datacenter
	}
	dcs := append([]string{dc}, u.FallbackDatacenters...)
	ws := make([]*watcher, len(dcs))
	for i, dc := range dcs {
		w := &watcher{
			client: d.o.Client, cfg: &d.o.Config, log: d.log,
			upstream: name, service: svc, tag: u.Tag, dc: dc, failover: i,
		}
		w.source = name + "/" + w.dcLabel()
		ws[i] = w
	}
	return ws
}

type pending struct {
	g       discovery.Group
	changed bool
	seen    time.Time
}

// Run watches until ctx ends. Its first send is the full set, once every watch has answered or
// failed once; a watch that failed is sent with Keep, so that the Manager keeps its persisted
// group; and while the catalog filter is set but the catalog could not be listed yet, a Keep
// group with no Source keeps every persisted group the set does not name. After that, it sends a watch's group when its instances change (a sync that changes nothing
// is not sent); when a watch loses Consul, its last group once more with Synced set to its last
// success (Synced is zero while in sync); and nothing else while Consul cannot be reached.
func (d *Discovery) Run(ctx context.Context, up chan<- []discovery.Group) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	events := make(chan event)
	active := map[*watcher]context.CancelFunc{}
	reported := map[*watcher]bool{}
	dynamic := map[string][]*watcher{} // catalog-discovered upstreams
	start := func(w *watcher) {
		wctx, wcancel := context.WithCancel(ctx)
		active[w] = wcancel
		d.m.addWatcher(w)
		wg.Go(func() {
			defer d.m.removeWatcher(w)
			w.run(wctx, events)
		})
	}
	pend := map[string]pending{}
	stopAll := func(ws []*watcher, n string) {
		for _, w := range ws {
			active[w]()
			d.m.removeWatcher(w) // now, before a new watch of the same source registers
			delete(active, w)
			delete(reported, w)
			pend[w.source] = pending{g: discovery.Group{Source: w.source, Upstream: n}, changed: true, seen: time.Now()}
		}
	}
	configured := map[string]Upstream{}
	static := map[string][]*watcher{}
	var catalogSet map[string]bool // the catalog watch's last answer
	watchDynamic := func(n string) {
		ws := d.watchers(n, Upstream{Tag: d.o.Config.Catalog.Tag})
		dynamic[n] = ws
		for _, w := range ws {
			start(w)
			if p, ok := pend[w.source]; ok && p.g.Instances == nil {
				delete(pend, w.source) // watched again: keep the instances until it syncs
			}
		}
		d.log.Info("consul: catalog upstream found", "upstream", n)
	}
	apply := func(ups map[string]Upstream) {
		for n, ws := range static {
			if u, ok := ups[n]; !ok || !sameUpstream(u, configured[n]) {
				stopAll(ws, n)
				delete(static, n)
			}
		}
		names := make([]string, 0, len(ups))
		for n := range ups {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			if _, ok := static[n]; ok {
				continue
			}
			if ws, ok := dynamic[n]; ok { // now configured: the configuration wins
				stopAll(ws, n)
				delete(dynamic, n)
			}
			static[n] = d.watchers(n, ups[n])
			for _, w := range static[n] {
				start(w)
				// A source watched again keeps its instances until the new watch syncs: never
				// remove them for a reload (Consul may be unreachable).
				if p, ok := pend[w.source]; ok && p.g.Instances == nil {
					delete(pend, w.source)
				}
			}
		}
		configured = ups
		// An upstream no longer configured that the catalog matches is watched as discovered:
		// the catalog watch sends only changes, so it would not start it again.
		for _, n := range sortedNames(catalogSet) {
			if _, ok := static[n]; !ok && dynamic[n] == nil {
				watchDynamic(n)
			}
		}
	}
	apply(d.o.Upstreams)
	var catalog chan catalogEvent
	catalogReported, catalogSynced := true, true
	if d.o.Config.Catalog.Filter != "" {
		catalog = make(chan catalogEvent)
		catalogReported, catalogSynced = false, false
		wg.Go(func() { d.watchCatalog(ctx, catalog) })
	}

	initial, sentInitial := false, false
	for {
		if !initial && catalogReported && len(reported) == len(active) {
			initial = true
		}
		var out chan<- []discovery.Group
		var batch []discovery.Group
		if initial && (len(pend) > 0 || !sentInitial) {
			out = up
			batch = make([]discovery.Group, 0, len(pend))
			for _, p := range pend {
				batch = append(batch, p.g)
			}
			if !sentInitial && !catalogSynced {
				// The catalog could not be listed: keep the persisted groups of discovered upstreams.
				batch = append(batch, discovery.Group{Keep: true})
			}
			slices.SortFunc(batch, func(a, b discovery.Group) int { return cmp.Compare(a.Source, b.Source) })
		}
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			if _, ok := active[ev.w]; !ok {
				continue // from a watch already stopped
			}
			reported[ev.w] = true
			switch {
			case ev.ok:
				if !ev.changed && !ev.recovered {
					continue // nothing new (a watch's first success is a change): no send, no rebuild, no write
				}
				p := pend[ev.w.source]
				p.g = ev.group
				if ev.changed {
					p.changed, p.seen = true, ev.seen
				}
				pend[ev.w.source] = p
			case ev.stale:
				p := pend[ev.w.source]
				p.g = ev.group
				pend[ev.w.source] = p
			case !initial:
				if _, ok := pend[ev.w.source]; !ok {
					pend[ev.w.source] = pending{g: discovery.Group{Source: ev.w.source, Upstream: ev.w.upstream, Keep: true}}
				}
			}
		case ce := <-catalog:
			catalogReported = true
			if !ce.ok {
				continue
			}
			catalogSynced, catalogSet = true, ce.services
			for n, ws := range dynamic {
				if _, still := ce.services[n]; still {
					continue
				}
				stopAll(ws, n)
				delete(dynamic, n)
				d.log.Info("consul: catalog upstream gone", "upstream", n)
			}
			for n := range ce.services {
				if _, ok := dynamic[n]; ok {
					continue
				}
				if _, ok := static[n]; ok {
					continue
				}
				watchDynamic(n)
			}
		case ups := <-d.updates:
			apply(ups)
		case out <- batch:
			sentInitial = true
			now := time.Now()
			for _, p := range pend {
				if p.changed && !p.seen.IsZero() {
					d.m.changeToSend.Observe(now.Sub(p.seen).Seconds())
					d.tracker.sent(p.g, p.seen)
				}
			}
			clear(pend)
		}
	}
}

type catalogEvent struct {
	ok       bool
	services map[string]bool
}

// watchCatalog runs a blocking query over the catalog's services with the configured filter.
func (d *Discovery) watchCatalog(ctx context.Context, out chan<- catalogEvent) {
	cfg := &d.o.Config
	var (
		index     uint64
		lastStart time.Time
		failures  int
		last      map[string]bool
	)
	for {
		if !sleep(ctx, cfg.MinInterval-time.Since(lastStart)) {
			return
		}
		lastStart = time.Now()
		q := &api.QueryOptions{Datacenter: cfg.Datacenter, WaitIndex: index, WaitTime: cfg.WaitTime,
			AllowStale: cfg.AllowStale, Filter: cfg.Catalog.Filter}
		qctx, qcancel := context.WithTimeout(ctx, queryTimeout(cfg.WaitTime))
		svcs, meta, err := d.o.Client.Catalog().Services(q.WithContext(qctx))
		qcancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			index = 0 // read afresh once it answers again (see watcher.run)
			if failures == 1 {
				d.log.Warn("consul: catalog watch failing", "err", err)
				if !send(ctx, out, catalogEvent{}) {
					return
				}
			}
			if !sleep(ctx, backoff(cfg.BackoffBase, cfg.BackoffMax, failures)) {
				return
			}
			continue
		}
		failures = 0
		index = nextIndex(index, meta.LastIndex)
		set := map[string]bool{}
		for n := range svcs {
			if n != "consul" && field.NameRE.MatchString(n) {
				set[n] = true
			}
		}
		if last != nil && mapsEqual(set, last) {
			continue
		}
		last = set
		if !send(ctx, out, catalogEvent{ok: true, services: set}) {
			return
		}
	}
}

// sortedNames returns the keys of set in order.
func sortedNames(set map[string]bool) []string {
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func mapsEqual(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func sameUpstream(a, b Upstream) bool {
	return a.Service == b.Service && a.Tag == b.Tag && a.Datacenter == b.Datacenter &&
		slices.Equal(a.FallbackDatacenters, b.FallbackDatacenters)
}
