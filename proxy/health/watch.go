package health

import (
	"context"
	"math/rand/v2"
	"net"
	"time"
)

// How an instance's idle connection is watched (see the README, "Crash detection"):
//
//   - At most one connection per instance is watched: the probe's own kept connection (HTTP
//     keep-alive; tcp and tls: the last probe's), gRPC's own connection, or, when the probe cannot
//     keep one (a server that closes each connection after its response), a dedicated plain TCP
//     connection that carries nothing. So a sidecar never holds more than one idle connection to
//     an instance.
//   - A hang-up (FIN or RST) of the watched connection triggers a probe at once. A hang-up alone is
//     never a verdict: the probe decides. If the probe passes, the instance merely closed an idle
//     connection; if that connection lived less than watchMinLife intervals, the next one is
//     watched only after a backoff that doubles each time (one interval, two, ... at most
//     watchMaxBackoff), so that a server that closes idle connections at once costs a connection
//     and a probe per minute at most, and never flaps.
//   - A dedicated connection is opened only to a healthy instance, after a passing probe. A probe
//     still unanswered at its hedge point closes the dedicated connection at once (a server that
//     serves one connection at a time may be waiting on it), and the connection is opened again
//     after the probe. When watchStrikes probes in a row are answered only after that, the server
//     is taken to serve one connection at a time: no dedicated connection is opened to it for a
//     minute, then two, four... up to watchHarmMax (a slow server under load rarely delays that
//     many probes in a row; a server that does is tested again less and less often).
const (
	watchMinLife    = 10          // intervals: a watched connection closed sooner is short-lived
	watchMaxBackoff = time.Minute // longest wait before watching again after short-lived ones
	watchStrikes    = 3           // slow probes in a row while a dedicated connection was held
	watchHarmMax    = time.Hour   // longest hold of dedicated connections to such a server
)

// watchState is the watched connection of a prober and its backoff. Guarded by the prober's mu.
type watchState struct {
	conn    net.Conn // in the watcher's set: the prober's kept conn, ded, or nil
	ded     net.Conn // the dedicated connection, if any
	since   int64    // scheduler time conn was last known open
	id      uint32   // watcher slot, 0 if none
	gen     uint32   // generation of conn: events of an older one are stale
	level   int      // doublings of the backoff after short-lived connections
	after   int64    // scheduler time before which nothing is watched
	life    int64    // lifetime of the connection whose hang-up triggered the next probe, -1 if none
	suspect bool     // the dedicated connection was closed by a slow probe
	strikes int      // slow probes in a row answered once the dedicated connection was closed
	harm    int      // times the instance was found to serve one connection at a time
}

// watchAllowed reports whether a connection of p may be watched now. Called with mu held.
func (p *prober) watchAllowed(now int64) bool {
	return p.c.watch != nil && p.chk.cfg.Watch && p.chk.cfg.Kind != KindNone && now >= p.w.after
}

// watchKept makes the kept connection the watched one, closing a dedicated one; a connection
// kept again (HTTP keep-alive) is already watched, which costs no system call. Called with mu held.
func (p *prober) watchKept(now int64) (drop net.Conn) {
	p.w.since = now
	if p.w.conn == p.conn {
		return nil
	}
	drop, p.w.ded = p.w.ded, nil
	p.setWatched(p.conn)
	return drop
}

// setWatched puts conn in the watcher's set as the one watched connection. Called with mu held.
func (p *prober) setWatched(conn net.Conn) {
	if p.w.id == 0 {
		p.w.id = p.c.watch.register(p)
	}
	p.w.gen++
	p.w.conn = conn
	p.c.watch.watch(conn, p.w.id, p.w.gen)
}

// unwatch stops watching and returns a dedicated connection to close. Called with mu held.
func (p *prober) unwatch() (drop net.Conn) {
	if p.w.conn != nil {
		p.w.gen++ // a kept connection stays in the set until closed: its events are now stale
		p.w.conn = nil
	}
	drop, p.w.ded = p.w.ded, nil
	return drop
}

// afterProbe decides what is watched after a probe that ended at now; it reports whether a
// dedicated connection should be opened. Called with mu held; drop must be closed after.
func (p *prober) afterProbe(now int64, woken, pass bool) (openDed bool, drop net.Conn) {
	if woken {
		if p.w.life >= 0 && pass { // the hang-up was the instance's habit, not a crash
			if p.w.life < watchMinLife*int64(p.chk.cfg.Interval) {
				p.w.level++
				p.w.after = now + int64(min(p.chk.cfg.Interval<<min(p.w.level-1, 20), watchMaxBackoff))
			} else {
				p.w.level = 0
			}
		}
		p.w.life = -1
	}
	if p.w.conn != nil && p.w.conn != p.conn && p.w.conn != p.w.ded {
		p.w.conn = nil // the kept connection was not kept again: closed, so out of the set
		p.w.gen++
	}
	switch {
	case p.w.suspect:
		p.w.suspect = false
		if pass { // answered once the dedicated connection was gone
			p.w.strikes++
		}
		if p.w.strikes >= watchStrikes {
			hold := min(watchMaxBackoff<<min(p.w.harm, 10), watchHarmMax)
			hold += time.Duration(rand.Int64N(int64(hold / 5))) // a fleet does not test again at once
			p.w.after, p.w.strikes = now+int64(hold), 0
			p.w.harm++
			p.c.log.Info("health: instance seems to serve one connection at a time; not holding an idle connection to it",
				"upstream", p.key.Upstream, "id", p.key.ID, "address", p.hostport, "for", hold.Round(time.Second))
		}
	case pass && p.w.ded != nil && p.w.conn == p.w.ded:
		p.w.strikes = 0 // answered promptly while the dedicated connection was held
	}
	if !p.watchAllowed(now) {
		drop = p.unwatch()
		if p.conn != nil && p.chk.cfg.Kind != KindHTTP && p.chk.cfg.Kind != KindHTTPS {
			closeConn(p.takeConn()) // a tcp or tls probe's connection is kept only to be watched
		}
		return false, drop
	}
	switch {
	case p.conn != nil:
		return false, p.watchKept(now)
	case p.chk.cfg.Kind == KindHTTP || p.chk.cfg.Kind == KindHTTPS:
		if p.w.ded == nil && pass && p.status.State == Healthy {
			return true, nil
		}
		if !pass || p.status.State != Healthy {
			return false, p.unwatch()
		}
	}
	return false, nil
}

// openDedicated connects the dedicated watch connection, which carries nothing.
func (p *prober) openDedicated(ctx context.Context) {
	d := net.Dialer{Timeout: p.chk.cfg.Timeout, KeepAlive: -1}
	conn, err := d.DialContext(ctx, "tcp", p.hostport)
	if err != nil {
		return // the next probe decides
	}
	p.mu.Lock()
	now := p.c.sched.now()
	if p.stopped || ctx.Err() != nil || p.w.ded != nil || p.conn != nil || p.inflight || !p.watchAllowed(now) {
		p.mu.Unlock()
		closeWatch(conn)
		return
	}
	p.w.ded, p.w.since = conn, now
	p.setWatched(conn)
	p.mu.Unlock()
}

// hedging is called when a probe is still unanswered at its hedge point: a dedicated connection
// is closed, in case the instance serves one connection at a time and waits on it.
func (p *prober) hedging() {
	p.mu.Lock()
	ded := p.w.ded
	if ded != nil {
		if p.w.conn == ded {
			p.w.conn = nil
			p.w.gen++
		}
		p.w.ded = nil
		p.w.suspect = true
	}
	p.mu.Unlock()
	closeWatch(ded)
}

// closed is called when the instance closed or reset the watched connection of generation gen:
// perhaps it crashed, so probe at once.
func (p *prober) closed(gen uint32) {
	p.mu.Lock()
	if p.stopped || gen != p.w.gen || p.w.conn == nil {
		p.mu.Unlock()
		return
	}
	var conn net.Conn
	switch p.w.conn {
	case p.w.ded:
		conn, p.w.ded = p.w.ded, nil
	case p.conn:
		conn = p.takeConn()
	default: // the kept connection is in use by the probe in flight, which sees the close itself
		p.mu.Unlock()
		return
	}
	p.w.conn = nil
	now := p.c.sched.now()
	p.hungUp(now, now-p.w.since)
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
	if now := p.c.sched.now(); p.chk.cfg.Watch && now >= p.w.after {
		p.hungUp(now, now-gc.since)
	}
	p.c.probes.Add(1) // under mu, before a stop can mark the prober stopped and Run can Wait
	p.mu.Unlock()
	go func() { // not on the transport's own reader goroutine
		defer p.c.probes.Done()
		gc.close()
	}()
}

// hungUp probes at once after the watched connection lived life and was closed. Called with mu held.
func (p *prober) hungUp(now, life int64) {
	p.up.met.closed.Inc()
	p.w.life = life
	if p.inflight {
		p.wake = true
		return
	}
	if p.c.sched.advance(p, now) {
		p.woken = true
	}
}

// closeWatch closes a dedicated connection with a FIN, which a server reading it sees as a plain
// end of input (a reset makes some, like Python's http.server, print an error).
func closeWatch(conn net.Conn) {
	if conn != nil {
		_ = conn.Close()
	}
}
