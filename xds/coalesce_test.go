package xds

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vigil-sidecar/vigil/discovery"
	vtestutil "github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// TestCoalescing: a burst of table changes becomes one push; changes that keep coming are
// still pushed within max_delay.
func TestCoalescing(t *testing.T) {
	tb := threeUpstreams()
	s, _, _ := runServer(t, tb, func(c *Config) { c.Coalesce, c.MaxDelay = 50*time.Millisecond, 150*time.Millisecond })
	pushes := func() float64 { return testutil.ToFloat64(s.m.pushes) }
	base := pushes()

	states := []health.State{health.Unhealthy, health.Healthy}
	for i := range 20 {
		setState(tb, []string{"a", "b", "c"}[i%3], "i0", states[i%2])
	}
	vtestutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() bool { return pushes() > base }, "a push")
	if got := pushes() - base; got > 2 {
		t.Fatalf("%g pushes for one burst", got)
	}

	// Changes every 10ms for 600ms never let the 50ms window close: max_delay forces pushes.
	base = pushes()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	snap := tb.Snapshot()
	for i := range 60 {
		<-tick.C
		// Each change is new (a weight never seen before), so that every push has something to send.
		ins := instancesOf(snap.Upstreams["a"])
		ins[1].Weight = 100 + i
		m := discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{"a": {Name: "a", Instances: ins}}}
		for _, n := range []string{"b", "c"} {
			m.Upstreams[n] = &discovery.Upstream{Name: n, Instances: instancesOf(snap.Upstreams[n])}
		}
		tb.SetMembership(m, statusesOf(snap, "a", "b", "c"))
	}
	if got := pushes() - base; got < 2 {
		t.Fatalf("%g pushes while changes kept coming for 600ms with max_delay 150ms", got)
	}
	if n := testutil.CollectAndCount(s.m.latency); n != 1 {
		t.Fatalf("latency histogram: %d series", n)
	}
}
