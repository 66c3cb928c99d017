package admin_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/goleak"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/admin"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs an admin server on 127.0.0.1:0 until the test ends and returns its bound address.
func serve(t *testing.T, tb *table.Table, reg *prometheus.Registry) string {
	t.Helper()
	s := admin.New(admin.Config{Listen: "127.0.0.1:0"}, tb, reg, nil)
	addrc := make(chan net.Addr, 1)
	s.OnListen = func(a net.Addr) { addrc <- a }
	run := testutil.Run(t, s, time.Second)
	select {
	case a := <-addrc:
		return "http://" + a.String()
	case <-run.Done():
		t.Fatalf("admin did not start: %v", run.Err())
	case <-time.After(5 * time.Second):
		t.Fatal("admin did not start")
	}
	return ""
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func fixture() *table.Table {
	tb := table.New(table.Config{Default: table.Policy{PanicMode: table.FailOpen, PanicThreshold: 60}})
	mem := discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{
		"api": {Name: "api", Synced: time.Now().Add(-3 * time.Second), Instances: []discovery.Instance{
			{ID: "a", Address: "127.0.0.1", Port: 1, Weight: 1, Tags: []string{"v1"}},
			{ID: "b", Address: "127.0.0.1", Port: 2, Weight: 1},
		}},
	}}
	tb.SetMembership(mem, nil)
	return tb
}

func TestUpstreamsJSONAndReadiness(t *testing.T) {
	tb := fixture()
	base := serve(t, tb, prometheus.NewRegistry())

	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("readyz before first probes: %d %s", code, body)
	}
	stats := new(health.Stats)
	stats.Record(time.Now(), 1500*time.Microsecond, nil)
	tb.SetStatus(discovery.Key{Upstream: "api", ID: "a"}, health.Status{State: health.Healthy, Stats: stats, Since: time.Now()})
	tb.SetStatus(discovery.Key{Upstream: "api", ID: "b"}, health.Status{State: health.Unhealthy, Reason: "connection refused"})
	if code, _ := get(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("readyz after first probes: %d", code)
	}
	if code, body := get(t, base+"/healthz"); code != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
		t.Errorf("healthz: %d %q", code, body)
	}

	code, body := get(t, base+"/v1/upstreams")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/upstreams: %d", code)
	}
	var tab admin.Table
	if err := json.Unmarshal(body, &tab); err != nil {
		t.Fatal(err)
	}
	if !tab.Ready || len(tab.Upstreams) != 1 {
		t.Fatalf("table = %+v", tab)
	}
	u := tab.Upstreams[0]
	if u.Name != "api" || u.Healthy != 1 || u.Total != 2 || !u.Panic || u.Served != 2 {
		t.Errorf("upstream = name %s healthy %d total %d panic %v served %d; want api 1 2 true 2 (fail open below 60%%)",
			u.Name, u.Healthy, u.Total, u.Panic, u.Served)
	}
	if u.StalenessSeconds == nil || *u.StalenessSeconds < 2 {
		t.Errorf("staleness = %v, want about 3s", u.StalenessSeconds)
	}
	a, b := u.Instances[0], u.Instances[1]
	if a.State != "healthy" || a.Probe.LatencyMS != 1.5 || a.Probe.Probes != 1 || len(a.Tags) != 1 {
		t.Errorf("instance a = %+v", a)
	}
	if b.State != "unhealthy" || b.Reason != "connection refused" {
		t.Errorf("instance b = %+v", b)
	}

	code, body = get(t, base+"/v1/upstreams/api")
	var one admin.Upstream
	if code != http.StatusOK || json.Unmarshal(body, &one) != nil || one.Name != "api" {
		t.Errorf("GET /v1/upstreams/api: %d %s", code, body)
	}
	if code, body := get(t, base+"/v1/upstreams/nope"); code != http.StatusNotFound || !bytes.Contains(body, []byte(`no upstream \"nope\"`)) {
		t.Errorf("unknown upstream: %d %s", code, body)
	}
}

// TestMetricsValid checks the exposition with Prometheus' own promtool.
func TestMetricsValid(t *testing.T) {
	testutil.Need(t, "promtool")
	tb := fixture()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := tb.Register(reg); err != nil {
		t.Fatal(err)
	}
	base := serve(t, tb, reg)
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	for _, want := range []string{`vigil_table_version`, `vigil_table_instances{state="unknown",upstream="api"} 2`, `vigil_table_panic{upstream="api"} 0`, "go_goroutines", "process_cpu_seconds_total"} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	testutil.CheckMetrics(t, string(body))
}
