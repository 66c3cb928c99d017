package forward

import (
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// chunk is how much one splice call may move before the idle deadlines are renewed.
const chunk = 4 << 20

// session is one forwarded connection: the client's and the instance's, both unwrapped
// *net.TCPConn so that io.Copy between them is a splice on Linux.
type session struct {
	l     *listener
	b     *backend
	c, bc *net.TCPConn

	last   atomic.Int64 // unix nanoseconds of the last byte moved either way
	closed sync.Once
	shut   atomic.Bool
}

// register records s on its listener and backend; it reports false when s must close at once
// (its instance or the listener finished draining while it connected).
func (f *Forwarder) register(s *session) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s.b.gone || s.l.gone {
		return false
	}
	s.b.sessions[s] = struct{}{}
	s.l.sessions[s] = struct{}{}
	if s.b.drain == nil && !served(f.src.Snapshot(), s.b) { // picked from a snapshot older than the last sync
		b := s.b
		b.drain = time.AfterFunc(s.l.conf().Drain, func() { f.drained(b) })
	}
	return true
}

// unregister forgets s and gives back its connection on the backend.
func (f *Forwarder) unregister(s *session) {
	f.mu.Lock()
	delete(s.b.sessions, s)
	delete(s.l.sessions, s)
	f.mu.Unlock()
	f.release(s.b)
}

func served(snap *table.Snapshot, b *backend) bool {
	if u := snap.Lookup(b.key.Upstream); u != nil {
		for _, in := range u.Served {
			if in.ID == b.key.ID {
				return true
			}
		}
	}
	return false
}

// drained closes the listener's connections at the end of the shutdown drain.
func (l *listener) drained() {
	l.f.mu.Lock()
	l.gone = true
	l.f.retired = slices.DeleteFunc(l.f.retired, func(x *listener) bool { return x == l })
	ss := make([]*session, 0, len(l.sessions))
	for s := range l.sessions {
		ss = append(ss, s)
	}
	l.f.mu.Unlock()
	drained := l.f.met.drained.WithLabelValues(l.name)
	for _, s := range ss {
		s.close(drained)
	}
}

// close closes both connections, once; the first call counts the close on counted (nil for
// none) before the connections close, so that the count is in before the session ends.
func (s *session) close(counted prometheus.Counter) {
	s.closed.Do(func() {
		if counted != nil {
			counted.Inc()
		}
		s.shut.Store(true)
		s.c.Close()
		s.bc.Close()
	})
}

// run copies both ways until both directions ended, then closes both connections.
func (s *session) run() {
	s.last.Store(time.Now().UnixNano())
	bytes := s.l.f.met.bytes
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.pipe(s.bc, s.c, bytes.WithLabelValues(s.l.name, "to_upstream").Add)
	}()
	s.pipe(s.c, s.bc, bytes.WithLabelValues(s.l.name, "to_client").Add)
	<-done
	s.close(nil)
}

// pipe copies src to dst with the kernel's splice, chunk by chunk so that the idle deadlines
// can be renewed, then half-closes dst. An error either way, or idle_timeout with no byte moved
// in either direction, closes the session.
func (s *session) pipe(dst, src *net.TCPConn, count func(float64)) {
	idle := s.l.conf().IdleTimeout
	for {
		now := time.Now()
		src.SetReadDeadline(now.Add(idle))
		dst.SetWriteDeadline(now.Add(idle))
		lr := io.LimitedReader{R: src, N: chunk}
		n, err := dst.ReadFrom(&lr)
		if n > 0 {
			count(float64(n))
			s.last.Store(time.Now().UnixNano())
		}
		switch {
		case err == nil && lr.N > 0: // EOF: pass the half-close on
			dst.CloseWrite()
			return
		case err == nil:
			continue
		case errors.Is(err, os.ErrDeadlineExceeded) && !s.shut.Load():
			if n > 0 || time.Since(time.Unix(0, s.last.Load())) < idle {
				continue // the other direction is busy
			}
			s.close(nil)
			return
		default:
			if !s.shut.Load() {
				s.c.SetLinger(0) // pass a reset on to the client
			}
			s.close(nil)
			return
		}
	}
}
