package health_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// rawServer answers each HTTP request with 200 and closes the connection after it, as
// `python3 -m http.server` does; options make it close idle connections, serve one connection at
// a time, or hang.
type rawServer struct {
	t          *testing.T
	l          net.Listener
	oneAtATime bool          // serve connections in turn on the accepting goroutine
	idleClose  time.Duration // close a connection that sent nothing for this long (0: never)
	reset      bool          // close idle connections with a reset
	hung       atomic.Bool   // read requests, never answer
	requests   atomic.Int64
	idle       atomic.Int64 // connections that ended without a request

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newRawServer(t *testing.T, configure func(*rawServer)) *rawServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{t: t, l: l, conns: map[net.Conn]struct{}{}}
	if configure != nil {
		configure(s)
	}
	s.wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			if s.oneAtATime {
				s.serve(c)
			} else {
				s.wg.Go(func() { s.serve(c) })
			}
		}
	})
	t.Cleanup(s.crash)
	return s
}

func (s *rawServer) addr() string { return s.l.Addr().String() }

func (s *rawServer) serve(c net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	br := bufio.NewReader(c)
	if s.idleClose > 0 {
		c.SetReadDeadline(time.Now().Add(s.idleClose))
	}
	if _, err := br.Peek(1); err != nil {
		s.idle.Add(1)
		if s.reset {
			c.(*net.TCPConn).SetLinger(0)
		}
		return
	}
	c.SetReadDeadline(time.Time{})
	if _, err := http.ReadRequest(br); err != nil {
		return
	}
	s.requests.Add(1)
	if s.hung.Load() {
		io.Copy(io.Discard, c) // until the client or crash closes it
		return
	}
	io.WriteString(c, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
}

// crash stops accepting and closes every connection, as a dying process does.
func (s *rawServer) crash() {
	s.l.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// watched is a check that only the watch connection can make fast: a 10 s interval.
func watched() health.CheckConfig {
	c := fast("http")
	c.Interval, c.UnhealthyInterval, c.Timeout, c.EdgeInterval = 10*time.Second, 200*time.Millisecond, 150*time.Millisecond, 50*time.Millisecond
	c.HealthyThreshold, c.UnhealthyThreshold = 1, 2
	return c
}

// A server that closes each connection after its response keeps no probe connection, so the
// checker holds a dedicated idle one; the crash closes it and the probe it triggers is refused,
// which is definitive: unhealthy after one failed probe, long before the 10 s interval.
func TestCrashDetectedWithoutKeepAlive(t *testing.T) {
	s := newRawServer(t, nil)
	reg := prometheus.NewRegistry()
	c := watched()
	c.EdgeInterval, c.UnhealthyInterval = 2*time.Second, 2*time.Second // no probe soon after the verdict
	h := start(t, health.Options{Default: c, Registerer: reg})
	k := discovery.Key{Upstream: "api", ID: "a"}
	h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", s.addr())}})
	st := h.wait(k, health.Healthy, 3*time.Second)
	testutil.Eventually(t, 3*time.Second, time.Millisecond, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.conns) == 1
	}, "an idle watch connection")

	s.crash()
	st = h.wait(k, health.Unhealthy, 3*time.Second)
	if !strings.Contains(st.Reason, "connection refused") {
		t.Errorf("reason %q", st.Reason)
	}
	if f := st.Stats.Load().Failures; f != 1 {
		t.Errorf("%d failed probes before unhealthy, want 1 (refused is definitive)", f)
	}
	if n := changesBy(t, reg, "watch"); n != 1 {
		t.Errorf("state changes by watch = %v, want 1", n)
	}
	// Both changes (to healthy, to unhealthy) reached the sink and were timed.
	testutil.Eventually(t, 3*time.Second, time.Millisecond, func() bool {
		return strings.Contains(testutil.Exposition(t, reg), "vigil_health_change_to_table_seconds_count 2")
	}, "two changes timed to the table")
}

// changesBy returns vigil_health_state_changes_total of a cause, summed over upstreams.
func changesBy(t *testing.T, reg *prometheus.Registry, cause string) (n float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "vigil_health_state_changes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "cause" && l.GetValue() == cause {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

// Connection refused makes a healthy instance unhealthy at once; other failures are confirmed.
func TestRefusedIsDefinitive(t *testing.T) {
	var failing atomic.Bool
	srv := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(503)
		}
	})
	for _, tc := range []struct {
		name  string
		fail  func()
		wantN uint64
	}{
		{"503 needs unhealthy_threshold failures", func() { failing.Store(true) }, 2},
		{"refused needs one", func() { srv.Listener.Close(); srv.CloseClientConnections() }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fast("http")
			c.Watch = false // only probes
			c.HealthyThreshold, c.UnhealthyThreshold = 1, 2
			h := start(t, health.Options{Default: c})
			k := discovery.Key{Upstream: "api", ID: "a"}
			failing.Store(false)
			h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", srv.URL)}})
			st := h.wait(k, health.Healthy, 3*time.Second)
			tc.fail()
			st = h.wait(k, health.Unhealthy, 5*time.Second)
			if f := st.Stats.Load().Failures; f != tc.wantN {
				t.Errorf("unhealthy after %d failures, want %d (%s)", f, tc.wantN, st.Reason)
			}
		})
	}
}

// A reset of the idle watch connection is not a verdict: the probe it triggers passes.
func TestResetOfWatchIsConfirmed(t *testing.T) {
	s := newRawServer(t, func(s *rawServer) { s.idleClose, s.reset = 20*time.Millisecond, true })
	c := watched()
	c.Interval = 100 * time.Millisecond
	c.Timeout, c.UnhealthyInterval = 90*time.Millisecond, 100*time.Millisecond
	h := start(t, health.Options{Default: c})
	k := discovery.Key{Upstream: "api", ID: "a"}
	h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", s.addr())}})
	st := h.wait(k, health.Healthy, 3*time.Second)
	testutil.Eventually(t, 5*time.Second, time.Millisecond, func() bool { return s.idle.Load() >= 2 }, "two watch connections reset")
	if f := st.Stats.Load().Failures; f != 0 {
		t.Errorf("%d failures: %s", f, st.Stats.Load().LastError)
	}
	if st, _ := h.sink.status(k); st.State != health.Healthy {
		t.Errorf("state %s", st.State)
	}
}

// A server that closes idle connections at once is not harmed: the watch connection is reopened
// with a doubling backoff (not a reconnect per probe), and the instance never flaps.
func TestServerClosingIdleAtOnce(t *testing.T) {
	s := newRawServer(t, func(s *rawServer) { s.idleClose = 5 * time.Millisecond })
	c := watched()
	c.Interval, c.Timeout, c.UnhealthyInterval, c.EdgeInterval, c.Jitter = 50*time.Millisecond, 45*time.Millisecond, 50*time.Millisecond, 5*time.Millisecond, 0
	h := start(t, health.Options{Default: c})
	k := discovery.Key{Upstream: "api", ID: "a"}
	h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", s.addr())}})
	st := h.wait(k, health.Healthy, 3*time.Second)
	from, updates := s.requests.Load(), h.sink.updatesOf(k)
	// 64 intervals: backoffs of 1, 2, 4, 8, 16, 32 intervals allow at most 7 watch connections.
	testutil.Eventually(t, 20*time.Second, 5*time.Millisecond, func() bool { return s.requests.Load() >= from+64 }, "64 probes")
	if n := s.idle.Load(); n > 8 {
		t.Errorf("%d watch connections in %d probes", n, s.requests.Load()-from)
	}
	if st, _ := h.sink.status(k); st.State != health.Healthy || h.sink.updatesOf(k) != updates {
		t.Errorf("state %s after %d changes", st.State, h.sink.updatesOf(k)-updates)
	}
	_ = st // a probe may race with the server's 5 ms idle close and fail; it is not confirmed
}

// A server that serves one connection at a time (the idle watch connection would block it) is not
// harmed: each probe that waits closes the watch connection and is answered; after three such
// probes in a row no watch connection is opened again (for a minute); the instance never fails.
func TestOneConnectionAtATime(t *testing.T) {
	s := newRawServer(t, func(s *rawServer) { s.oneAtATime = true })
	c := steady("http")
	c.HealthyThreshold, c.UnhealthyThreshold = 1, 1
	h := start(t, health.Options{Default: c})
	k := discovery.Key{Upstream: "api", ID: "a"}
	h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", s.addr())}})
	st := h.wait(k, health.Healthy, 3*time.Second)
	from := s.requests.Load()
	testutil.Eventually(t, 30*time.Second, 5*time.Millisecond, func() bool { return s.requests.Load() >= from+6 }, "6 probes")
	if f := st.Stats.Load().Failures; f != 0 {
		t.Errorf("%d failures: %s", f, st.Stats.Load().LastError)
	}
	if n := s.idle.Load(); n != 3 {
		t.Errorf("%d watch connections, want 3 then none", n)
	}
}

// A hung instance (accepts, reads, never answers) is unhealthy after one probe's timeout: the
// probe on the kept connection and a second one on a fresh connection both go unanswered.
func TestHungDetectedInOneTimeout(t *testing.T) {
	s := newRawServer(t, nil)
	c := watched()
	c.Interval, c.UnhealthyInterval, c.Timeout = 300*time.Millisecond, time.Second, 200*time.Millisecond
	c.UnhealthyThreshold = 2
	h := start(t, health.Options{Default: c})
	k := discovery.Key{Upstream: "api", ID: "a"}
	h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", s.addr())}})
	st := h.wait(k, health.Healthy, 3*time.Second)
	s.hung.Store(true)
	probes := st.Stats.Load().Probes
	from := s.requests.Load()
	st = h.wait(k, health.Unhealthy, 5*time.Second)
	if n := st.Stats.Load().Probes - probes; n != 1 {
		t.Errorf("unhealthy after %d probes, want 1", n)
	}
	if n := s.requests.Load() - from; n != 2 {
		t.Errorf("%d requests while hung, want 2 (the probe and its hedge)", n)
	}
	if !strings.Contains(st.Reason, "no response within") {
		t.Errorf("reason %q", st.Reason)
	}
}

// A kept connection that stops being answered while fresh ones are (a stuck connection, not a hung
// instance) costs no failure: the hedge on a fresh connection passes and becomes the kept one.
func TestHedgePassesOnFreshConnection(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var stuck atomic.Bool
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				br := bufio.NewReader(c)
				for n := 0; ; n++ {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					if n > 0 && stuck.Load() { // only a connection's first request is answered
						continue
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	c := steady("http")
	c.Interval, c.Timeout, c.UnhealthyInterval = 300*time.Millisecond, 250*time.Millisecond, 300*time.Millisecond
	c.HealthyThreshold, c.UnhealthyThreshold = 1, 1
	h := start(t, health.Options{Default: c})
	k := discovery.Key{Upstream: "api", ID: "a"}
	h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", l.Addr().String())}})
	st := h.wait(k, health.Healthy, 3*time.Second)
	stuck.Store(true)
	probes := st.Stats.Load().Probes
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool { return st.Stats.Load().Probes >= probes+4 }, "4 probes")
	if f := st.Stats.Load().Failures; f != 0 {
		t.Errorf("%d failures: %s", f, st.Stats.Load().LastError)
	}
	if s, _ := h.sink.status(k); s.State != health.Healthy {
		t.Errorf("state %s", s.State)
	}
}
