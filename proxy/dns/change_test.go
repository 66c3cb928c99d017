package dns_test

import (
	"slices"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// histCount is the sample count of the histogram name in reg.
func histCount(t testing.TB, reg *prometheus.Registry, name string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatalf("no histogram %s", name)
	return 0
}

// Each health state change is observed once in vigil_dns_change_to_answer_seconds, at the first
// answer from an index that holds it: not again at later answers, nor after a rebuild without a
// change; a change that no query saw before the next rebuild is observed at the next answer.
func TestChangeToAnswer(t *testing.T) {
	const name = "vigil_dns_change_to_answer_seconds"
	tb := newTable(table.Config{}, basic())
	s, reg := serve(t, dns.DefaultConfig(), tb)
	has := func(ip string) bool {
		return slices.Contains(ips(ask(t, "udp", s.Addr(), "web.service.consul.", mdns.TypeA).Answer), ip)
	}
	if !has("127.0.0.11") {
		t.Fatal("w1 not answered at the start")
	}
	if n := histCount(t, reg, name); n != 0 {
		t.Fatalf("%d observations before any change", n)
	}
	w1, w2 := discovery.Key{Upstream: "web", ID: "w1"}, discovery.Key{Upstream: "web", ID: "w2"}
	rebuilds := func() float64 { return counter(t, reg, "vigil_dns_index_rebuilds_total") }
	waitRebuild := func(after float64) {
		testutil.Eventually(t, 5*time.Second, time.Millisecond, func() bool { return rebuilds() > after }, "index rebuilt")
	}

	tb.SetStatus(w1, health.Status{State: health.Unhealthy, Since: time.Now()})
	testutil.Eventually(t, 5*time.Second, 2*time.Millisecond, func() bool { return !has("127.0.0.11") }, "w1 left the answers")
	for range 3 {
		has("127.0.0.12")
	}
	if n := histCount(t, reg, name); n != 1 {
		t.Fatalf("%d observations after one change, want 1", n)
	}

	// A rebuild without a state change (a new reason) observes nothing.
	r := rebuilds()
	tb.SetStatus(w2, health.Status{State: health.Healthy, Reason: "same state", Since: time.Now()})
	waitRebuild(r)
	has("127.0.0.12")
	if n := histCount(t, reg, name); n != 1 {
		t.Fatalf("%d observations after a rebuild without a change, want 1", n)
	}

	// A change, then a rebuild without one before any query: one observation at the next answer.
	r = rebuilds()
	tb.SetStatus(w1, health.Status{State: health.Healthy, Since: time.Now()})
	waitRebuild(r)
	r = rebuilds()
	tb.SetStatus(w2, health.Status{State: health.Healthy, Reason: "again", Since: time.Now()})
	waitRebuild(r)
	if n := histCount(t, reg, name); n != 1 {
		t.Fatalf("%d observations before a query, want 1", n)
	}
	if !has("127.0.0.11") {
		t.Fatal("w1 not answered after it recovered")
	}
	has("127.0.0.11")
	if n := histCount(t, reg, name); n != 2 {
		t.Fatalf("%d observations after the second change, want 2", n)
	}
}
