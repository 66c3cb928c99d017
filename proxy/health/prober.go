package health

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"strconv"
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

	idx int   // in the scheduler's heap, -1 when not; guarded by c.sched.mu
	due int64 // next probe, scheduler time; guarded by c.sched.mu

	dirty bool // queued for the sink; guarded by c.dirtyMu

	mu       sync.Mutex
	m        machine
	status   Status
	stopped  bool
	inflight bool
	wake     bool     // probe again at once when the probe in flight ends
	edge     bool     // next probe after edge_interval when the probe in flight ends
	lastWake int64    // scheduler time of the last probe triggered by a closed connection
	woken    bool     // the next probe is triggered by a closed connection
	benign   bool     // the instance closes idle connections yet passes: closes trigger no probe
	conn     net.Conn // kept between probes
	watched  net.Conn // the connection in the watcher's set, if any
	wid      uint32   // watcher slot, 0 if none
	wgen     uint32   // generation of watched: events of an older one are stale
	grpc     *grpcConn
	req      []byte      // the http request, built at the first http probe
	tlsCfg   *tls.Config // built at the first TLS probe
}

// newProber starts following an instance; prev, if not nil, is the prober it replaces (same
// instance, new check), whose verdict it keeps.
func (c *Checker) newProber(u *upstream, chk *check, k discovery.Key, address string, port int, now time.Time, prev *prober) *prober {
	p := &prober{c: c, up: u, chk: chk, key: k, address: address, port: port,
		hostport: net.JoinHostPort(address, strconv.Itoa(port)), idx: -1}
	if prev != nil {
		prev.mu.Lock()
		p.m, p.status, p.stats = prev.m, prev.status, prev.stats
		prev.mu.Unlock()
	} else {
		p.stats = &Stats{}
		p.status = Status{State: Unknown, Since: now, Stats: p.stats}
	}
	if chk.cfg.Kind == KindNone {
		if p.status.State != Healthy || p.status.Flapping {
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
	c.sched.add(p, c.sched.now()+int64(spread(first)))
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
	if p.wid != 0 && p.c.watch != nil {
		p.c.watch.forget(p.wid)
		p.wid = 0
	}
	p.mu.Unlock()
	closeConn(conn)
	gc.close()
}

// takeConn returns the kept connection. It stays in the watcher's set until closed (closing
// removes it), but its hang-ups are ignored while it is taken. Called with mu held.
func (p *prober) takeConn() net.Conn {
	conn := p.conn
	p.conn = nil
	return conn
}

// keepConn keeps conn until the next probe and watches it for hang-ups; a connection kept again
// (HTTP keep-alive) is already watched, which costs no system call. Called with mu held.
func (p *prober) keepConn(conn net.Conn) {
	p.conn = conn
	if p.c.watch == nil || conn == p.watched {
		return
	}
	if p.wid == 0 {
		p.wid = p.c.watch.register(p)
	}
	p.wgen++
	p.watched = conn
	p.c.watch.watch(conn, p.wid, p.wgen)
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
	woken, kept := p.woken, conn != nil || gc != nil
	p.woken = false
	p.mu.Unlock()

	startMono := p.c.sched.now()
	start := time.Now()
	conn, gc, err := p.run(ctx, start.Add(p.chk.cfg.Timeout), conn, gc)
	end := time.Now()

	p.mu.Lock()
	p.inflight = false
	if p.stopped || ctx.Err() != nil {
		p.mu.Unlock()
		closeConn(conn)
		gc.close()
		return
	}
	p.grpc = gc
	if conn != nil {
		p.keepConn(conn)
	} else {
		p.watched = nil
	}
	switch {
	case woken && err == nil:
		p.benign = true // the close was the instance's habit, not a crash
	case kept && err == nil:
		p.benign = false // connections live from probe to probe again
	}
	p.stats.Record(end, end.Sub(start), err)
	if err == nil {
		p.up.met.ok.Inc()
	} else {
		p.up.met.fail.Inc()
	}
	p.up.met.duration.Observe(end.Sub(start).Seconds())
	edge := p.m.Disagrees(err == nil) || p.edge
	p.observe(end, err)
	cfg := &p.chk.cfg
	var due int64
	now := p.c.sched.now()
	switch {
	case p.wake:
		due = now
	case edge: // counted from the end: a probe that timed out is not followed by another at once
		due = now + int64(cfg.EdgeInterval)
	default:
		due = startMono + int64(p.chk.interval(p.status.State == Unhealthy))
	}
	p.wake, p.edge = false, false
	p.c.sched.add(p, max(due, now))
	p.mu.Unlock()
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

// observe feeds a result to the state machine and queues the status if it changed. Called with mu held.
func (p *prober) observe(now time.Time, err error) {
	p.m.Observe(now, err == nil, p.chk.th)
	st := p.status
	st.State, st.Flapping = p.m.State(), p.m.Flapping()
	switch {
	case st.State == Healthy:
		st.Reason = ""
	case err != nil:
		st.Reason = err.Error()
	case st.Flapping:
		st.Reason = flapReason(p.chk.cfg.Flap)
	}
	if st.State == p.status.State && st.Reason == p.status.Reason && st.Flapping == p.status.Flapping {
		return
	}
	if st.State != p.status.State {
		st.Since = now
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

// closed is called when the instance closed or reset the kept connection of watch generation gen:
// perhaps it crashed, so probe at once. If that probe passes, the instance merely closes idle
// connections: its closes trigger no probe until a connection lives from one probe to the next.
func (p *prober) closed(gen uint32) {
	p.mu.Lock()
	if p.stopped || p.inflight || gen != p.wgen || p.conn == nil || p.conn != p.watched {
		p.mu.Unlock()
		return
	}
	conn := p.takeConn()
	p.watched = nil
	p.wakeLocked()
	p.mu.Unlock()
	closeConn(conn)
}

// grpcClosed is called when the transport of gc ended without our asking.
func (p *prober) grpcClosed(gc *grpcConn) {
	p.mu.Lock()
	if p.stopped || p.grpc != gc {
		p.mu.Unlock()
		return
	}
	p.grpc = nil
	p.wakeLocked()
	p.c.probes.Add(1) // under mu, before a stop can mark the prober stopped and Run can Wait
	p.mu.Unlock()
	go func() { // not on the transport's own reader goroutine
		defer p.c.probes.Done()
		gc.close()
	}()
}

// wakeLocked probes at once after a closed connection, unless the instance is known to close idle
// connections, and at most once per interval. Called with mu held.
func (p *prober) wakeLocked() {
	p.up.met.closed.Inc()
	now := p.c.sched.now()
	if p.benign || p.lastWake != 0 && now-p.lastWake < int64(p.chk.cfg.Interval) {
		return
	}
	p.lastWake = now
	if p.inflight {
		p.wake = true
		return
	}
	if p.c.sched.advance(p, now) {
		p.woken = true
	}
}
