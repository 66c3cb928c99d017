package admin

import (
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// TestHistoryBounded: a flapping, busy instance keeps only its newest samples and transitions,
// oldest first; an instance that leaves is forgotten and its leaving is a transition.
func TestHistoryBounded(t *testing.T) {
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	k := discovery.Key{Upstream: "api", ID: "a"}
	tb.SetMembership(discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{
		"api": {Name: "api", Instances: []discovery.Instance{{ID: "a", Address: "127.0.0.1", Port: 1}}},
	}}, nil)
	h := newHistory()
	stats := new(health.Stats)
	now := time.Unix(1000, 0)
	const rounds = 100
	for i := range rounds {
		st := health.Status{State: health.Healthy, Stats: stats, Since: now}
		if i%2 == 1 {
			st = health.Status{State: health.Unhealthy, Reason: "refused", Stats: stats, Since: now}
		}
		tb.SetStatus(k, st)
		stats.Record(now, time.Duration(i)*time.Millisecond, nil)
		if !h.observe(tb.Snapshot(), now) {
			t.Fatalf("round %d: nothing recorded", i)
		}
		now = now.Add(time.Second)
	}
	samples, trans := h.instance(k)
	if len(samples) != samplesPerInstance || samples[0].LatencyMS != rounds-samplesPerInstance || samples[len(samples)-1].LatencyMS != rounds-1 {
		t.Errorf("samples: %d, first %v last %v; want the newest %d in order", len(samples), samples[0], samples[len(samples)-1], samplesPerInstance)
	}
	if len(trans) != transitionsPerInstance || trans[len(trans)-1].To != "unhealthy" || trans[len(trans)-1].Cause != "refused" ||
		trans[len(trans)-2].To != "healthy" || trans[len(trans)-2].Cause != "probes passing" {
		t.Errorf("transitions = %+v", trans)
	}
	if n := len(h.recentList()); n != recentTransitions {
		t.Errorf("recent = %d, want %d", n, recentTransitions)
	}
	if h.observe(tb.Snapshot(), now) {
		t.Error("an unchanged snapshot recorded something")
	}

	tb.SetMembership(discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{"api": {Name: "api"}}}, nil)
	h.observe(tb.Snapshot(), now)
	if s, tr := h.instance(k); s != nil || tr != nil {
		t.Errorf("a left but its history stays: %d samples, %d transitions", len(s), len(tr))
	}
	recent := h.recentList()
	if last := recent[len(recent)-1]; last.ID != "a" || last.To != "removed" {
		t.Errorf("last transition = %+v, want a removed", last)
	}
}
