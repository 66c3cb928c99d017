package health_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/testutil"
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
}

// A crashed instance closes the idle keep-alive connection: it is probed at once and found
// unhealthy long before the 10 s interval.
func TestCrashDetectedByClosedConnection(t *testing.T) {
	for _, kind := range []string{"http", "tcp"} {
		t.Run(kind, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
			srv.Start()
			t.Cleanup(srv.Close)
			c := fast(kind)
			c.Interval, c.UnhealthyInterval, c.Timeout, c.EdgeInterval = 10*time.Second, 200*time.Millisecond, 150*time.Millisecond, 50*time.Millisecond
			c.UnhealthyThreshold = 2
			h := start(t, health.Options{Default: c})
			k := discovery.Key{Upstream: "api", ID: "a"}
			h.set(map[string][]discovery.Instance{"api": {instanceOf(t, "a", srv.URL)}})
			h.wait(k, health.Healthy, 3*time.Second)

			crashed := time.Now()
			srv.Listener.Close()         // new connections are refused
			srv.CloseClientConnections() // and the idle one is closed, as by a dying process
			st := h.wait(k, health.Unhealthy, 3*time.Second)
			if d := time.Since(crashed); d > 2*time.Second {
				t.Errorf("unhealthy after %s", d)
			}
			if !strings.Contains(st.Reason, "connection refused") {
				t.Errorf("reason %q", st.Reason)
			}
		})
	}
}

func TestMembershipChangesLeaveOthersAlone(t *testing.T) {
	a, na := countingServer(t)
	b, _ := countingServer(t)
	cs, _ := countingServer(t)
	h := start(t, health.Options{Default: fast("http")})
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
	def := fast("http")
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
		"vigil_health_schedule_lag_seconds", "vigil_health_probes_in_flight", "vigil_health_probed_instances"} {
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
