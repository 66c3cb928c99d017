package forward

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// listener is one upstream's local port.
type listener struct {
	f    *Forwarder
	name string
	cfg  atomic.Pointer[Config] // replaced by SetUpstreams
	ln   net.Listener

	open int // open client connections; guarded by f.mu
	// guarded by f.mu
	sessions map[*session]struct{}
	closing  bool        // no longer accepting: draining
	drainT   *time.Timer // the drain of a closing listener
	gone     bool        // the drain ended: connections are closed at once
}

// conf returns the listener's current configuration.
func (l *listener) conf() *Config { return l.cfg.Load() }

// accept serves the listener until it is closed.
func (l *listener) accept() {
	m := l.f.met
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				l.f.log.Warn("forward: accept", "upstream", l.name, "err", err)
				time.Sleep(5 * time.Millisecond) // fds exhausted: let some connections end
				continue
			}
			l.f.log.Error("forward: accept", "upstream", l.name, "err", err)
			return
		}
		m.total.WithLabelValues(l.name).Inc()
		l.f.mu.Lock()
		full := l.open >= l.conf().MaxConnections
		if !full {
			l.open++
			l.f.conns.Add(1)
		}
		l.f.mu.Unlock()
		if full {
			m.refused.WithLabelValues(l.name, "limit").Inc()
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			c.Close()
			continue
		}
		go l.handle(c)
	}
}

// handle forwards one client connection.
func (l *listener) handle(c net.Conn) {
	f := l.f
	defer f.conns.Done()
	m := f.met
	m.active.WithLabelValues(l.name).Inc()
	defer func() {
		m.active.WithLabelValues(l.name).Dec()
		f.mu.Lock()
		l.open--
		f.mu.Unlock()
	}()
	cc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return
	}
	b, bc := l.connect()
	if bc == nil {
		m.refused.WithLabelValues(l.name, "no_instance").Inc()
		cc.Close()
		return
	}
	s := &session{l: l, b: b, c: cc, bc: bc}
	if !f.register(s) {
		s.close(nil)
		f.release(b)
		return
	}
	s.run()
	f.unregister(s)
}

// connect dials a served instance, trying others when a connect fails, within max_attempts and
// connect_budget. Each failure is reported to health as a passive signal.
func (l *listener) connect() (*backend, *net.TCPConn) {
	f, cfg := l.f, l.conf()
	deadline := time.Now().Add(cfg.ConnectBudget)
	var tried []string
	for attempt := 0; attempt < cfg.MaxAttempts; attempt++ {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		b, addr := f.pick(l, f.src.Snapshot().Lookup(l.name), tried)
		if b == nil {
			break
		}
		if attempt > 0 {
			f.met.retries.WithLabelValues(l.name).Inc()
		}
		d := net.Dialer{Timeout: min(cfg.ConnectTimeout, left), KeepAlive: cfg.KeepAlive}
		conn, err := d.DialContext(context.Background(), "tcp", addr)
		if err == nil {
			return b, conn.(*net.TCPConn)
		}
		f.release(b)
		tried = append(tried, b.key.ID)
		reason := classify(err)
		f.met.failures.WithLabelValues(l.name, reason).Inc()
		f.log.Debug("forward: connect", "upstream", l.name, "instance", b.key.ID, "addr", addr, "err", err)
		if f.rep != nil && f.rep.ReportPassive(b.key, fmt.Errorf("passive: connect %s", reason), cfg.MaxEjectionPercent) {
			f.met.ejected.WithLabelValues(l.name).Inc()
			f.log.Warn("forward: instance ejected by connect failures", "upstream", l.name, "instance", b.key.ID, "reason", reason)
		}
	}
	return nil, nil
}

// classify names the reason of a failed connect.
func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	default:
		return "failed"
	}
}

// pick chooses a served instance of u not in tried, among the best priority left: the less
// loaded (connections per weight) of two drawn at random by weight. It reserves a connection
// on the chosen backend.
func (f *Forwarder) pick(l *listener, u *table.Upstream, tried []string) (*backend, string) {
	if u == nil {
		return nil, ""
	}
	var buf [16]*table.Instance
	cands, total := buf[:0], 0
	for _, in := range u.Served {
		if contains(tried, in.ID) {
			continue
		}
		if len(cands) > 0 && in.Priority != cands[0].Priority {
			break
		}
		cands = append(cands, in)
		total += weight(in)
	}
	if len(cands) == 0 {
		return nil, ""
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	best := cands[0]
	if len(cands) > 1 {
		a := draw(cands, total, nil)
		b := draw(cands, total-weight(a), a) // two distinct choices
		best = a
		// a's load is active/weight: compare across without division.
		if f.load(u.Name, b)*weight(a) < f.load(u.Name, a)*weight(b) {
			best = b
		}
	}
	k := discovery.Key{Upstream: u.Name, ID: best.ID}
	bk := f.backends[k]
	if bk == nil {
		bk = &backend{key: k, l: l, sessions: map[*session]struct{}{}}
		f.backends[k] = bk
	}
	bk.active++
	return bk, best.HostPort()
}

// load is the number of connections open or opening to in. Called with mu held.
func (f *Forwarder) load(upstream string, in *table.Instance) int {
	if b := f.backends[discovery.Key{Upstream: upstream, ID: in.ID}]; b != nil {
		return b.active
	}
	return 0
}

// draw picks an instance of cands at random by weight, skipping except; total is the sum of
// the weights of the others.
func draw(cands []*table.Instance, total int, except *table.Instance) *table.Instance {
	n := rand.IntN(total)
	for _, in := range cands {
		if in == except {
			continue
		}
		if n -= weight(in); n < 0 {
			return in
		}
	}
	return cands[len(cands)-1]
}

func weight(in *table.Instance) int { return max(in.Weight, 1) }

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
