package health_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// countingServer is an HTTP server that counts its requests.
func countingServer(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	s := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		io.WriteString(w, "ok")
	})
	return s, &n
}

func TestNewCheckerRejectsBadChecks(t *testing.T) {
	bad := health.DefaultCheck()
	bad.Timeout = 2 * time.Second
	_, err := health.NewChecker(health.Options{Default: health.DefaultCheck(), Checks: map[string]health.CheckConfig{"api": bad}, Sink: newSink(t)})
	if err == nil || !strings.Contains(err.Error(), "checks[api].timeout: must be less than interval") {
		t.Errorf("err = %v", err)
	}
	if _, err := health.NewChecker(health.Options{Default: health.DefaultCheck()}); err == nil {
		t.Error("no error without a sink")
	}
	if _, err := health.NewChecker(health.Options{Sink: newSink(t)}); err != nil {
		t.Errorf("zero Default: %v", err)
	}
}

// A crashed instance closes the connection kept between probes: it is probed at once and found
// unhealthy long before the 10 s interval would allow.
func TestCrashDetectedByClosedConnection(t *testing.T) {
	okHandler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	// crash stops accepting and closes every connection, as a dying process does.
	crash := func(s *httptest.Server) func() {
		return func() { s.Listener.Close(); s.CloseClientConnections() }
	}
	for _, tc := range []struct {
		kind  string
		serve func(t *testing.T) (addr string, crash func())
	}{
		{"http", func(t *testing.T) (string, func()) { s := httpServer(t, okHandler); return s.URL, crash(s) }},
		{"tcp", func(t *testing.T) (string, func()) { s := httpServer(t, okHandler); return s.URL, crash(s) }},
		{"tls", func(t *testing.T) (string, func()) {
			s := httptest.NewTLSServer(okHandler)
			t.Cleanup(s.Close)
			return s.URL, crash(s)
		}},
		{"grpc", grpcServerStop},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			addr, crash := tc.serve(t)
			c := fast(tc.kind)
			c.Interval, c.UnhealthyInterval, c.Timeout, c.EdgeInterval = 10*time.Second, 200*time.Millisecond, 150*time.Millisecond, 50*time.Millisecond
			c.UnhealthyThreshold = 2
			c.TLS.InsecureSkipVerify = tc.kind == "tls"
			h := start(t, health.Options{Default: c})
			k := discovery.Key{Upstream: "api", ID: "a"}
			h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", addr)}})
			h.wait(k, health.Healthy, 3*time.Second)

			crashed := time.Now()
			crash()
			// Order, not speed: the closed connection triggers the probes, before the 10 s
			// interval would have.
			st := h.wait(k, health.Unhealthy, c.Interval)
			if d := time.Since(crashed); d >= c.Interval {
				t.Errorf("unhealthy after %s: found by the interval probe, not by the closed connection", d)
			}
			if !strings.Contains(st.Reason, "connection refused") {
				t.Errorf("reason %q", st.Reason)
			}
		})
	}
}

// Passive failures and wake-ups never put a second probe of an instance in flight.
func TestOneProbeInFlight(t *testing.T) {
	var cur, most atomic.Int64
	srv := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		n := cur.Add(1)
		defer cur.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		select { // slower than edge_interval, quicker than the timeout
		case <-time.After(40 * time.Millisecond):
		case <-r.Context().Done():
		}
	})
	c := fast("http")
	c.Interval, c.UnhealthyInterval, c.Timeout, c.EdgeInterval = 400*time.Millisecond, 400*time.Millisecond, 300*time.Millisecond, 10*time.Millisecond
	c.HealthyThreshold, c.UnhealthyThreshold = 2, 50
	h := start(t, health.Options{Default: c})
	k := discovery.Key{Upstream: "api", ID: "a"}
	h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", srv.URL)}})
	st := h.wait(k, health.Healthy, 3*time.Second)
	for i := range 40 {
		h.c.ReportFailure(k, errTest)
		testutil.Eventually(t, 2*time.Second, time.Millisecond, func() bool { return st.Stats.Load().Failures > uint64(i) }, "failure counted")
		if i%10 == 9 {
			n := st.Stats.Load().Probes
			testutil.Eventually(t, 3*time.Second, 2*time.Millisecond, func() bool { return st.Stats.Load().Probes > n+1 }, "probes go on")
		}
	}
	if m := most.Load(); m != 1 {
		t.Errorf("%d probes in flight at once", m)
	}
}

func TestMembershipChangesLeaveOthersAlone(t *testing.T) {
	a, na := countingServer(t)
	b, _ := countingServer(t)
	cs, _ := countingServer(t)
	h := start(t, health.Options{Default: steady("http")})
	ka, kb, kc := discovery.Key{Upstream: "api", ID: "a"}, discovery.Key{Upstream: "api", ID: "b"}, discovery.Key{Upstream: "web", ID: "c"}
	ia, ib, ic := instanceOf(t, "a", a.URL), instanceOf(t, "b", b.URL), instanceOf(t, "c", cs.URL)
	h.set(map[string][]discovery.Instance{"api": {ia, ib}})
	sa := h.wait(ka, health.Healthy, 3*time.Second)
	h.wait(kb, health.Healthy, 3*time.Second)
	updates := h.sink.updatesOf(ka)
	probes := sa.Stats.Load().Probes

	// b leaves, c comes in another upstream, a's tags change.
	ia.Tags = []string{"new"}
	h.set(map[string][]discovery.Instance{"api": {ia}, "web": {ic}})
	h.wait(kc, health.Healthy, 3*time.Second)
	if _, ok := h.sink.status(kb); ok {
		t.Error("b still in the sink")
	}
	st, _ := h.sink.status(ka)
	if st.Stats != sa.Stats || !st.Since.Equal(sa.Since) || st.State != health.Healthy {
		t.Errorf("a disturbed: %+v, was %+v", st, sa)
	}
	seen := na.Load()
	testutil.Eventually(t, 3*time.Second, 10*time.Millisecond, func() bool { return na.Load() > seen+1 }, "a still probed")
	if st.Stats.Load().Probes < probes {
		t.Error("a's probe count went back")
	}
	if got := h.sink.updatesOf(ka); got != updates {
		t.Errorf("a's status was set %d more times", got-updates)
	}
}

func TestReportFailureIsConfirmedAtEdgeInterval(t *testing.T) {
	srv, _ := countingServer(t)
	c := fast("http")
	c.Interval, c.UnhealthyInterval, c.Timeout, c.EdgeInterval = 10*time.Second, 200*time.Millisecond, 150*time.Millisecond, 50*time.Millisecond
	h := start(t, health.Options{Default: c})
	k := discovery.Key{Upstream: "api", ID: "a"}
	h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", srv.URL)}})
	h.wait(k, health.Healthy, 3*time.Second)
	updates := h.sink.updatesOf(k)

	// One passive failure makes it unhealthy (threshold 1); the probe after edge_interval, not after
	// the 10 s interval, brings it back.
	h.c.ReportFailure(k, errors.New("forward: connect refused"))
	h.c.ReportFailure(discovery.Key{Upstream: "api", ID: "nosuch"}, errTest) // ignored
	testutil.Eventually(t, 3*time.Second, 2*time.Millisecond, func() bool { return h.sink.updatesOf(k) >= updates+2 }, "down and up again")
	st := h.wait(k, health.Healthy, time.Second)
	if f := st.Stats.Load().Failures; f != 1 {
		t.Errorf("failures = %d, want 1", f)
	}
}

func TestSetChecksRestartsOnlyChanged(t *testing.T) {
	srv := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bad" {
			w.WriteHeader(500)
		}
	})
	def := steady("http")
	h := start(t, health.Options{Default: def, Checks: map[string]health.CheckConfig{"api": def}})
	ka, kw := discovery.Key{Upstream: "api", ID: "a"}, discovery.Key{Upstream: "web", ID: "w"}
	h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", srv.URL)}, "web": {instanceOf(t, "w", srv.URL)}})
	h.wait(ka, health.Healthy, 3*time.Second)
	sw := h.wait(kw, health.Healthy, 3*time.Second)
	updates := h.sink.updatesOf(kw)

	bad := def
	bad.HTTP.Path = "/bad"
	h.c.SetChecks(def, map[string]health.CheckConfig{"api": bad})
	st := h.wait(ka, health.Unhealthy, 3*time.Second)
	if !strings.Contains(st.Reason, "http status 500") {
		t.Errorf("reason %q", st.Reason)
	}
	if w, _ := h.sink.status(kw); h.sink.updatesOf(kw) != updates || !w.Since.Equal(sw.Since) {
		t.Errorf("web disturbed: %+v", w)
	}

	none := def
	none.Kind = health.KindNone
	h.c.SetChecks(def, map[string]health.CheckConfig{"api": none})
	h.wait(ka, health.Healthy, 3*time.Second)
}

func TestMetrics(t *testing.T) {
	srv, _ := countingServer(t)
	reg := prometheus.NewRegistry()
	h := start(t, health.Options{Default: fast("http"), Registerer: reg})
	closed := net.JoinHostPort("127.0.0.1", "1")
	h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", srv.URL)}, "gone": {instanceOf(t, "b", closed)}})
	h.wait(discovery.Key{Upstream: "api", ID: "a"}, health.Healthy, 3*time.Second)
	h.wait(discovery.Key{Upstream: "gone", ID: "b"}, health.Unhealthy, 3*time.Second)

	for _, name := range []string{"vigil_health_probes_total", "vigil_health_probe_duration_seconds", "vigil_health_transitions_total",
		"vigil_health_schedule_lag_seconds", "vigil_health_probes_in_flight", "vigil_health_probed_instances",
		"vigil_health_state_changes_total", "vigil_health_change_to_table_seconds"} {
		if n, err := promtest.GatherAndCount(reg, name); err != nil || n == 0 {
			t.Errorf("%s: %d series, %v", name, n, err)
		}
	}
	if n := gatherMatching(t, reg, `upstream="gone"`); n == 0 {
		t.Error("no series of upstream gone")
	}

	h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", srv.URL)}})
	testutil.Eventually(t, 3*time.Second, 10*time.Millisecond, func() bool { return gatherMatching(t, reg, `upstream="gone"`) == 0 },
		"series of deleted upstream gone")
	promtoolCheck(t, reg)
}

// An instance that changes state too often is held unhealthy, flagged flapping, until stable.
func TestFlapDamping(t *testing.T) {
	var failing atomic.Bool
	srv := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(500)
		}
	})
	c := fast("http")
	c.Flap = health.FlapConfig{Threshold: 2, Window: time.Minute, HoldDown: 600 * time.Millisecond}
	h := start(t, health.Options{Default: c})
	k := discovery.Key{Upstream: "api", ID: "a"}
	h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", srv.URL)}})
	h.wait(k, health.Healthy, 3*time.Second) // the first verdict is not a change

	failing.Store(true)
	h.wait(k, health.Unhealthy, 3*time.Second) // change 1
	failing.Store(false)
	h.wait(k, health.Healthy, 3*time.Second) // change 2
	failing.Store(true)
	st := h.wait(k, health.Unhealthy, 3*time.Second) // change 3: flapping
	if !st.Flapping {
		t.Fatalf("not flapping after 3 changes: %+v", st)
	}
	failing.Store(false)
	held := time.Now()
	testutil.Eventually(t, 3*time.Second, 5*time.Millisecond, func() bool {
		st, _ = h.sink.status(k)
		return strings.HasPrefix(st.Reason, "flapping:")
	}, "held down though passing")
	if st.State != health.Unhealthy || !st.Flapping {
		t.Errorf("while held: %+v", st)
	}
	st = h.wait(k, health.Healthy, 3*time.Second)
	if st.Flapping || time.Since(held) < 600*time.Millisecond {
		t.Errorf("served again after %s: %+v", time.Since(held), st)
	}
}

// A server that closes every connection after its response (without saying so) is not probed more
// often: once a probe triggered by a closed connection passes, closes trigger no probe; none fails.
func TestServerClosingIdleConnections(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var requests atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 4096)
			if n, _ := c.Read(buf); n > 0 {
				requests.Add(1)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })

	c := fast("http")
	c.Jitter = 0
	h := start(t, health.Options{Default: c})
	k := discovery.Key{Upstream: "api", ID: "a"}
	h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", l.Addr().String())}})
	st := h.wait(k, health.Healthy, 3*time.Second)
	began, from := time.Now(), requests.Load()
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool { return requests.Load() >= from+10 }, "10 probes")
	// One probe per 300 ms interval: 10 take at least 9 intervals (7 allows for the first wake-ups).
	if d := time.Since(began); d < 7*c.Interval {
		t.Errorf("10 probes in %s", d)
	}
	if f := st.Stats.Load().Failures; f != 0 {
		t.Errorf("%d failed probes, last: %s", f, st.Stats.Load().LastError)
	}
}

func TestRunOnceAndClosedMembers(t *testing.T) {
	c, err := health.NewChecker(health.Options{Sink: newSink(t)})
	if err != nil {
		t.Fatal(err)
	}
	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Run(stopped); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := c.Run(context.Background()); err == nil {
		t.Fatal("a second Run was not refused")
	}

	// With its membership channel closed, a checker runs on until ctx ends.
	h := start(t, health.Options{Default: fast("none")})
	h.set(map[string][]discovery.Instance{"api": {{ID: "a", Address: "127.0.0.1", Port: 1}}})
	close(h.members)
	h.c.SetChecks(fast("tcp"), nil)
	h.wait(discovery.Key{Upstream: "api", ID: "a"}, health.Unhealthy, 3*time.Second)
}

// The first probes of a new membership are spread over one interval, not sent at once.
func TestFirstProbesSpread(t *testing.T) {
	addr := tcpServer(t)
	c := steady("tcp")
	c.UnhealthyInterval = c.Interval
	h := start(t, health.Options{Default: c})
	var ins []discovery.Instance
	for i := range 200 {
		ins = append(ins, instanceOf(t, strconv.Itoa(i), addr))
	}
	began := time.Now()
	h.set(map[string][]discovery.Instance{"api": ins})
	var first, last time.Time
	for i := range ins {
		st := h.wait(discovery.Key{Upstream: "api", ID: strconv.Itoa(i)}, health.Healthy, 5*time.Second)
		at := st.Since
		if first.IsZero() || at.Before(first) {
			first = at
		}
		if at.After(last) {
			last = at
		}
	}
	if d := last.Sub(first); d < 300*time.Millisecond {
		t.Errorf("first probes within %s of each other", d)
	}
	if d := last.Sub(began); d > 2*c.Interval {
		t.Errorf("last first probe after %s", d)
	}
}

// A passive failure that ejects an instance sets its reason ("passive: connect refused"); the
// active probes it triggers, failing too, keep that reason until the instance is healthy again.
func TestPassiveReasonKept(t *testing.T) {
	var failing atomic.Bool
	srv := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(500)
		}
	})
	h := start(t, health.Options{Default: fast("http")})
	k := discovery.Key{Upstream: "api", ID: "a"}
	h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", srv.URL)}})
	h.wait(k, health.Healthy, 3*time.Second)
	failing.Store(true)
	if !h.c.ReportPassive(k, errors.New("passive: connect refused"), 100) {
		t.Fatal("the passive failure did not eject")
	}
	st := h.wait(k, health.Unhealthy, 3*time.Second)
	probes := st.Stats.Load().Probes
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() bool {
		return st.Stats.Load().Probes >= probes+2 // the immediate probe and the next one failed
	}, "active probes after the ejection")
	if st, _ := h.sink.status(k); st.State != health.Unhealthy || st.Reason != "passive: connect refused" {
		t.Errorf("after failing probes: %s, reason %q; want unhealthy, passive: connect refused", st.State, st.Reason)
	}
	failing.Store(false)
	if st := h.wait(k, health.Healthy, 3*time.Second); st.Reason != "" {
		t.Errorf("healthy with reason %q", st.Reason)
	}
}

// Connect failures alone never make more than maxEjectionPercent of an upstream's instances
// unhealthy: of four instances at 50%, the first two are ejected, the next two are not (their
// failures are not counted; only the probe they trigger decides, and it passes).
func TestPassiveEjectionCap(t *testing.T) {
	srv := httpServer(t, func(w http.ResponseWriter, r *http.Request) {})
	c := fast("http")
	// The ejected stay unhealthy for the test: 5 passes needed, a probe every second at most.
	c.Interval, c.UnhealthyInterval, c.EdgeInterval, c.Timeout = 2*time.Second, 2*time.Second, time.Second, 900*time.Millisecond
	c.HealthyThreshold = 5
	h := start(t, health.Options{Default: c})
	ids := []string{"a", "b", "c", "d"}
	var ins []discovery.Instance
	for _, id := range ids {
		in := instanceOf(t, id, srv.URL)
		in.ID = id
		ins = append(ins, in)
	}
	h.set(map[string][]discovery.Instance{"api": ins})
	for _, id := range ids {
		h.wait(discovery.Key{Upstream: "api", ID: id}, health.Healthy, 5*time.Second)
	}
	for i, id := range ids {
		got := h.c.ReportPassive(discovery.Key{Upstream: "api", ID: id}, errors.New("passive: connect refused"), 50)
		if want := i < 2; got != want {
			t.Errorf("%s: ejected %v, want %v", id, got, want)
		}
	}
	h.wait(discovery.Key{Upstream: "api", ID: "b"}, health.Unhealthy, 3*time.Second)
	for _, id := range ids[2:] {
		if st, _ := h.sink.status(discovery.Key{Upstream: "api", ID: id}); st.State != health.Healthy {
			t.Errorf("%s: %s (%s), want healthy: past the cap", id, st.State, st.Reason)
		}
	}
}
