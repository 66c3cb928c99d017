package health

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
)

// prober follows one instance: its verdict, its next probe and the connection kept between probes.
type prober struct {
	c        *Checker
	up       *upstream
	chk      *check
	key      discovery.Key
	address  string
	port     int
	hostport string
	stats    *Stats

	idx  int   // in the scheduler's heap, -1 when not; guarded by c.sched.mu
	due  int64 // next probe, scheduler time; guarded by c.sched.mu
	at   int64 // earliest time the next probe may be dispatched (due less its window); guarded by c.sched.mu
	slot int64 // due time of the probe in flight; set by the scheduler before the probe starts

	dirty bool // queued for the sink; guarded by c.dirtyMu

	mu       sync.Mutex
	m        machine
	status   Status
	changed  time.Time // when a probe result changed status.State, until the sink has it
	stopped  bool
	inflight bool
	wake     bool     // probe again at once when the probe in flight ends
	edge     bool     // next probe after edge_interval when the probe in flight ends
	woken    bool     // the next probe is triggered by a closed connection
	conn     net.Conn // kept between probes
	w        watchState
	grpc     *grpcConn
	req      []byte      // the http request, built at the first http probe
	tlsCfg   *tls.Config // built at the first TLS probe
	sh       shareState  // shared probing (shared.go)
}

// rewakeDelay is the delay before confirming a failed probe triggered by a closed connection.
const rewakeDelay = 5 * time.Millisecond

// newProber starts following an instance; prev, if not nil, is the prober it replaces (same
// instance, new check), whose verdict it keeps.
func (c *Checker) newProber(u *upstream, chk *check, k discovery.Key, address string, port int, now time.Time, prev *prober, zone string) *prober {
	p := &prober{c: c, up: u, chk: chk, key: k, address: address, port: port,
		hostport: net.JoinHostPort(address, strconv.Itoa(port)), idx: -1, w: watchState{life: -1}, sh: shareState{zone: zone, owned: true}}
	if prev != nil {
		prev.mu.Lock()
		p.m, p.status, p.stats, p.sh = prev.m, prev.status, prev.stats, prev.sh
		prev.mu.Unlock()
	} else {
		p.stats = &Stats{}
		p.status = Status{State: Unknown, Since: now, Stats: p.stats}
	}
	if chk.cfg.Kind == KindNone {
		if p.status.State != Healthy || p.status.Flapping {
			if p.status.State != Healthy {
				u.met.changes[causeRegistry].Inc()
			}
			p.status = Status{State: Healthy, Since: now, Stats: p.stats}
			if prev != nil {
				c.markDirty(p)
			}
		}
		return p
	}
	// A new instance is not served until probed: its first probe comes within the shorter of
	// the intervals (spread at random, so that a large membership is not probed all at once).
	first := chk.cfg.Interval
	if p.status.State != Healthy {
		first = min(first, chk.cfg.UnhealthyInterval)
	}
	c.sched.addWindow(p, c.sched.now()+int64(spread(first)), chk.window())
	return p
}

// Status returns the current verdict.
func (p *prober) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

// stop ends the prober: no more probes; its connections are closed now or when the probe in flight ends.
func (p *prober) stop() {
	p.mu.Lock()
	p.stopped = true
	p.c.sched.remove(p)
	var conn net.Conn
	var gc *grpcConn
	if !p.inflight {
		conn, gc = p.takeConn(), p.grpc
		p.grpc = nil
	}
	ded := p.unwatch()
	if p.w.id != 0 {
		p.c.watch.forget(p.w.id)
		p.w.id = 0
	}
	p.mu.Unlock()
	closeConn(conn)
	closeWatch(ded)
	gc.close()
}

// takeConn returns the kept connection. It stays in the watcher's set until closed (closing
// removes it), but its hang-ups are ignored while it is taken. Called with mu held.
func (p *prober) takeConn() net.Conn {
	conn := p.conn
	p.conn = nil
	return conn
}

// probe runs one probe and handles its result; it runs on its own goroutine.
func (p *prober) probe(ctx context.Context) {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return
	}
	p.inflight = true
	conn, gc := p.takeConn(), p.grpc
	p.grpc = nil
	woken := p.woken
	p.woken = false
	hedge := p.m.Raw() == Healthy
	p.mu.Unlock()

	startMono := p.c.sched.now()
	start := time.Now()
	conn, gc, err, fails := p.attempt(ctx, start.Add(p.chk.cfg.Timeout), conn, gc, hedge)
	end := time.Now()

	p.mu.Lock()
	p.inflight = false
	if p.stopped || ctx.Err() != nil {
		p.mu.Unlock()
		closeConn(conn)
		gc.close()
		return
	}
	p.grpc, p.conn = gc, conn
	p.stats.Record(end, end.Sub(start), err)
	if err == nil {
		p.up.met.ok.Inc()
	} else {
		p.up.met.fail.Inc()
	}
	p.up.met.duration.Observe(end.Sub(start).Seconds())
	edge := p.m.Disagrees(err == nil) || p.edge
	cause := causeProbe
	if woken {
		cause = causeWatch
	}
	if definitive(err) {
		fails = max(fails, p.chk.th.Unhealthy)
	}
	p.observeBy(end, err, cause, fails)
	now := p.c.sched.now()
	openDed, drop := p.afterProbe(now, woken, err == nil)
	cfg := &p.chk.cfg
	var due int64
	window := time.Duration(0)
	switch {
	case p.wake:
		due = now
		p.woken = true
	case edge && woken && err != nil && p.status.State == Healthy:
		// The instance closed the watched connection and the probe failed: perhaps it is going
		// down and its listener not yet closed (a connection accepted, then reset). Confirm soon.
		due = now + int64(min(cfg.EdgeInterval, rewakeDelay))
	case edge: // counted from the end: a probe that timed out is not followed by another at once
		due = now + int64(cfg.EdgeInterval)
	default: // from when it was due if dispatched early within its window, else from its start
		due = max(startMono, p.slot) + int64(p.nextInterval())
		window = p.chk.window()
	}
	p.wake, p.edge = false, false
	p.c.sched.addWindow(p, max(due, now), window)
	p.mu.Unlock()
	closeWatch(drop)
	if openDed {
		p.openDedicated(ctx)
	}
}

// reportFailure counts a passive failure as a failed probe.
func (p *prober) reportFailure(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped || p.chk.cfg.Kind == KindNone {
		return
	}
	now := time.Now()
	p.stats.Record(now, time.Duration(p.stats.latency.Load()), err)
	p.up.met.fail.Inc()
	edge := p.m.Disagrees(false)
	p.observe(now, err)
	if !edge {
		return
	}
	if p.inflight {
		p.edge = true
		return
	}
	p.c.sched.advance(p, p.c.sched.now()+int64(p.chk.cfg.EdgeInterval))
}

// reportPassive counts a passive failure as a failed probe when count is set, and probes at once.
// It reports whether the failure made the instance unhealthy.
func (p *prober) reportPassive(err error, count bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped || p.chk.cfg.Kind == KindNone {
		return false
	}
	ejected := false
	if count {
		now := time.Now()
		p.stats.Record(now, time.Duration(p.stats.latency.Load()), err)
		p.up.met.fail.Inc()
		before := p.m.State()
		p.observe(now, err)
		ejected = before != Unhealthy && p.m.State() == Unhealthy
	}
	if p.inflight {
		p.wake = true
	} else {
		p.c.sched.advance(p, p.c.sched.now())
	}
	return ejected
}

// passivePrefix starts the reason of a failure seen by a proxy (forward: "passive: connect refused").
const passivePrefix = "passive: "

// observe feeds a result to the state machine and queues the status if it changed. Called with mu held.
func (p *prober) observe(now time.Time, err error) {
	p.observeBy(now, err, causePassive, 1)
}

// observeBy feeds n equal results, each err, to the state machine and queues the status if it
// changed; cause is what triggered the result. Called with mu held.
func (p *prober) observeBy(now time.Time, err error, cause cause, n int) {
	before := p.m.State()
	for range max(n, 1) {
		p.m.Observe(now, err == nil, p.chk.th)
	}
	st := p.status
	st.State, st.Flapping = p.m.State(), p.m.Flapping()
	switch {
	case st.State == Healthy:
		st.Reason = ""
	case err != nil && cause != causePassive && p.status.State == Unhealthy && strings.HasPrefix(p.status.Reason, passivePrefix):
		// An active probe that confirms a passive ejection keeps its reason: why the instance
		// was ejected ("passive: connect refused"), until it is healthy again.
	case err != nil:
		st.Reason = err.Error()
	case st.Flapping:
		st.Reason = flapReason(p.chk.cfg.Flap)
	}
	p.tellSharer(before, st.Reason)
	st = p.overlay(st)
	if st.State == p.status.State && st.Reason == p.status.Reason && st.Flapping == p.status.Flapping {
		return
	}
	if st.State != p.status.State {
		st.Since = now
		p.changed = now
		p.up.met.changes[cause].Inc()
		level := slog.LevelInfo
		if p.status.State == Unknown {
			level = slog.LevelDebug // a first verdict
		}
		if st.State == Healthy {
			p.up.met.toHealthy.Inc()
			p.c.log.Log(context.Background(), level, "health: instance healthy", "upstream", p.key.Upstream, "id", p.key.ID, "address", p.hostport)
		} else {
			p.up.met.toUnhealthy.Inc()
			p.c.log.Info("health: instance unhealthy", "upstream", p.key.Upstream, "id", p.key.ID,
				"address", p.hostport, "reason", st.Reason, "flapping", st.Flapping)
		}
	}
	p.status = st
	p.c.markDirty(p)
}

// takeChange returns when a probe result last changed the state, if the sink has not had it yet.
func (p *prober) takeChange() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	at := p.changed
	p.changed = time.Time{}
	return at
}
