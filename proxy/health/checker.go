package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/field"
)

// Options configures a Checker.
type Options struct {
	Default    CheckConfig            // for upstreams not in Checks; the zero value means DefaultCheck()
	Checks     map[string]CheckConfig // per upstream name
	Sink       Sink                   // e.g. *table.Table
	Members    <-chan discovery.Membership
	Registerer prometheus.Registerer // may be nil
	Logger     *slog.Logger          // may be nil
}

// maxInFlight bounds the probes in flight at once; the scheduler waits when it is reached.
const maxInFlight = 8192

// batchStatuses is the number of pending status changes above which the sink gets one
// SetMembership instead of a SetStatus per instance.
const batchStatuses = 64

// Checker probes every instance of the membership it reads and tells its Sink the verdicts.
type Checker struct {
	sink    Sink
	members <-chan discovery.Membership
	log     *slog.Logger
	met     *metrics
	sched   *sched
	watch   *watcher
	sem     chan struct{}
	probes  sync.WaitGroup
	ctx     context.Context // of Run, for probes
	running atomic.Bool
	lagHook func(time.Duration) // tests and benchmarks

	sharer    Sharer        // shared probing (shared.go); nil: every instance is owned
	shareIdle time.Duration // probe interval of an instance owned by others

	mu     sync.RWMutex
	def    CheckConfig
	checks map[string]CheckConfig
	ups    map[string]*upstream
	mem    discovery.Membership

	dirtyMu  sync.Mutex
	dirty    []*prober
	dirtySig chan struct{}

	passiveMu sync.Mutex // one passive verdict at a time, so that the ejection cap holds
}

// upstream is the checker's view of one upstream: its check, series and probers.
type upstream struct {
	name    string
	chk     *check
	met     upstreamMetrics
	probers map[string]*prober // by instance ID
}

// NewChecker returns a Checker; Run starts it.
func NewChecker(o Options) (*Checker, error) {
	if o.Sink == nil {
		return nil, errors.New("health: options: sink is required")
	}
	o.Default = orDefault(o.Default)
	var errs field.Errors
	errs.Add("default", o.Default.Validate())
	for name, c := range o.Checks {
		errs.Add("checks["+name+"]", c.Validate())
	}
	if err := errs.Err(); err != nil {
		return nil, fmt.Errorf("health: %w", err)
	}
	for name, c := range o.Checks {
		if chk := compile(c); chk.err != nil {
			return nil, fmt.Errorf("health: checks[%s]: %w", name, chk.err)
		}
	}
	if chk := compile(o.Default); chk.err != nil {
		return nil, fmt.Errorf("health: default: %w", chk.err)
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Checker{
		sink:     o.Sink,
		members:  o.Members,
		log:      log,
		met:      newMetrics(o.Registerer),
		sched:    newSched(),
		sem:      make(chan struct{}, maxInFlight),
		ctx:      context.Background(),
		def:      o.Default,
		checks:   o.Checks,
		ups:      map[string]*upstream{},
		dirtySig: make(chan struct{}, 1),
	}
	return c, nil
}

// Run probes until ctx ends, then stops every prober and waits for probes in flight.
func (c *Checker) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("health: checker already running")
	}
	c.ctx = ctx
	w, err := newWatcher()
	if err != nil {
		c.log.Warn("health: closed probe connections will not be noticed between probes", "err", err)
	}
	c.watch = w
	var wg sync.WaitGroup
	wg.Go(func() { c.sched.run(ctx, c.dispatch) })
	if w != nil {
		wg.Go(w.run)
	}
	defer func() {
		wg.Wait()
		c.mu.Lock()
		for name, u := range c.ups {
			for _, p := range u.probers {
				p.stop()
			}
			c.met.forget(name)
		}
		c.ups = map[string]*upstream{}
		c.mu.Unlock()
		c.probes.Wait()
		if w != nil {
			w.close()
		}
	}()
	members := c.members
	for {
		select {
		case <-ctx.Done():
			if w != nil {
				w.stop()
			}
			return nil
		case m, ok := <-members:
			if !ok {
				members = nil
				continue
			}
			c.flush() // changes before this membership go first
			c.setMembership(m)
		case <-c.dirtySig:
			c.flush()
		}
	}
}

// dispatch starts one probe of p; it runs on the scheduler's goroutine.
func (c *Checker) dispatch(p *prober, lag time.Duration) {
	c.met.lag.Observe(lag.Seconds())
	if c.lagHook != nil {
		c.lagHook(lag)
	}
	select {
	case c.sem <- struct{}{}:
	case <-c.ctx.Done():
		return
	}
	c.met.inFlight.Inc()
	c.probes.Add(1)
	go func() {
		defer func() {
			c.met.inFlight.Dec()
			<-c.sem
			c.probes.Done()
		}()
		p.probe(c.ctx)
	}()
}

// setMembership starts and stops probers and hands the membership to the sink.
func (c *Checker) setMembership(m discovery.Membership) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mem = m
	now := time.Now()
	statuses := make(map[discovery.Key]Status)
	for name, mu := range m.Upstreams {
		u := c.ups[name]
		if u == nil {
			u = &upstream{name: name, chk: compile(c.checkOf(name)), met: c.met.upstream(name), probers: map[string]*prober{}}
			c.ups[name] = u
		}
		seen := make(map[string]struct{}, len(mu.Instances))
		for i := range mu.Instances {
			in := &mu.Instances[i]
			seen[in.ID] = struct{}{}
			p := u.probers[in.ID]
			if p != nil && (p.address != in.Address || p.port != in.Port) {
				p.stop()
				p = nil
			}
			if p == nil {
				p = c.newProber(u, u.chk, discovery.Key{Upstream: name, ID: in.ID}, in.Address, in.Port, now, nil, in.Zone)
				u.probers[in.ID] = p
			}
			statuses[p.key] = p.Status()
		}
		for id, p := range u.probers {
			if _, ok := seen[id]; !ok {
				p.stop()
				delete(u.probers, id)
			}
		}
		u.met.instances.Set(float64(len(u.probers)))
	}
	for name, u := range c.ups {
		if _, ok := m.Upstreams[name]; !ok {
			for _, p := range u.probers {
				p.stop()
			}
			delete(c.ups, name)
			c.met.forget(name)
		}
	}
	c.sink.SetMembership(m, statuses)
}

func (c *Checker) checkOf(upstream string) CheckConfig {
	if chk, ok := c.checks[upstream]; ok {
		return chk
	}
	return c.def
}

// SetChecks replaces the checks (on reload). Probers whose check changed restart, keeping their
// instance's verdict; the others are untouched.
func (c *Checker) SetChecks(def CheckConfig, checks map[string]CheckConfig) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.def, c.checks = orDefault(def), checks
	now := time.Now()
	for name, u := range c.ups {
		cfg := c.checkOf(name)
		if reflect.DeepEqual(cfg, u.chk.cfg) {
			continue
		}
		u.chk = compile(cfg)
		if u.chk.err != nil {
			c.log.Error("health: check", "upstream", name, "err", u.chk.err)
		}
		for id, p := range u.probers {
			p.stop()
			u.probers[id] = c.newProber(u, u.chk, p.key, p.address, p.port, now, p, p.sh.zone)
		}
	}
}

// ReportFailure counts a passive failure (seen by a proxy) against an instance as a failed probe.
func (c *Checker) ReportFailure(k discovery.Key, err error) {
	c.mu.RLock()
	var p *prober
	if u := c.ups[k.Upstream]; u != nil {
		p = u.probers[k.ID]
	}
	c.mu.RUnlock()
	if p == nil {
		return
	}
	if err == nil {
		err = errors.New("passive failure")
	}
	p.reportFailure(err)
}

// ReportPassive counts a connect failure seen by a proxy as a failed probe of k, in the same state
// machine as the active probes, and probes k at once. When ejecting k would leave more than
// maxEjectionPercent of its upstream's instances unhealthy, the failure is not counted: only the
// probe decides. It reports whether this failure made k unhealthy.
func (c *Checker) ReportPassive(k discovery.Key, err error, maxEjectionPercent float64) bool {
	c.passiveMu.Lock()
	defer c.passiveMu.Unlock()
	c.mu.RLock()
	var p *prober
	var all []*prober
	if u := c.ups[k.Upstream]; u != nil {
		p = u.probers[k.ID]
		all = make([]*prober, 0, len(u.probers))
		for _, q := range u.probers {
			all = append(all, q)
		}
	}
	c.mu.RUnlock()
	if p == nil {
		return false
	}
	down, self := 0, false
	for _, q := range all {
		q.mu.Lock()
		if q.m.State() == Unhealthy {
			down++
			self = self || q == p
		}
		q.mu.Unlock()
	}
	count := self || float64(down+1)*100 <= maxEjectionPercent*float64(len(all))
	if err == nil {
		err = errors.New("passive failure")
	}
	return p.reportPassive(err, count)
}

// markDirty queues p's status for the sink.
func (c *Checker) markDirty(p *prober) {
	c.dirtyMu.Lock()
	if !p.dirty {
		p.dirty = true
		c.dirty = append(c.dirty, p)
	}
	c.dirtyMu.Unlock()
	select {
	case c.dirtySig <- struct{}{}:
	default:
	}
}

// flush hands queued status changes to the sink: one by one, or all at once when there are many.
func (c *Checker) flush() {
	c.dirtyMu.Lock()
	ps := c.dirty
	c.dirty = nil
	for _, p := range ps {
		p.dirty = false
	}
	c.dirtyMu.Unlock()
	if len(ps) == 0 {
		return
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if len(ps) > batchStatuses {
		statuses := make(map[discovery.Key]Status)
		for _, u := range c.ups {
			for _, p := range u.probers {
				statuses[p.key] = p.Status()
			}
		}
		c.sink.SetMembership(c.mem, statuses)
		for _, p := range ps {
			c.published(p)
		}
		return
	}
	for _, p := range ps {
		// A prober replaced since it changed (a reload, a new address) hands its verdict to
		// its successor: send the current prober's status, never drop the change.
		if u := c.ups[p.key.Upstream]; u != nil {
			if cur := u.probers[p.key.ID]; cur != nil {
				c.sink.SetStatus(cur.key, cur.Status())
			}
		}
		c.published(p)
	}
}

// published observes, once the sink has p's status, how long ago a probe result changed its state.
func (c *Checker) published(p *prober) {
	if at := p.takeChange(); !at.IsZero() {
		c.met.toTable.Observe(time.Since(at).Seconds())
	}
}

// spread returns a random first-probe delay within one interval.
func spread(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// orDefault returns c, or DefaultCheck() if c is the zero value.
func orDefault(c CheckConfig) CheckConfig {
	if reflect.DeepEqual(c, CheckConfig{}) {
		return DefaultCheck()
	}
	return c
}
