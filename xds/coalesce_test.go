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
// still pushed, by max_delay. Counts and order only: the windows are wide enough that the
// machine's speed cannot split a burst (a tight loop of 20 changes within a 1 s window).
func TestCoalescing(t *testing.T) {
	t.Run("burst", func(t *testing.T) {
		tb := threeUpstreams()
		s, _, _ := runServer(t, tb, func(c *Config) { c.Coalesce, c.MaxDelay = time.Second, time.Minute })
		pushes := func() float64 { return testutil.ToFloat64(s.m.pushes) }
		vtestutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool { return pushes() > 0 }, "the first push")
		base := pushes()
		states := []health.State{health.Unhealthy, health.Healthy}
		for i := range 20 {
			setState(tb, []string{"a", "b", "c"}[i%3], "i0", states[i%2])
		}
		vtestutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool { return pushes() > base }, "a push")
		if got := pushes() - base; got != 1 {
			t.Fatalf("%g pushes for one burst, want 1", got)
		}
		if n := testutil.CollectAndCount(s.m.latency); n != 1 {
			t.Fatalf("latency histogram: %d series", n)
		}
	})

	// Changes every 10 ms never let a 50 ms window close: pushes still come while they keep
	// coming (max_delay 150 ms), before the stream of changes ends.
	t.Run("max_delay", func(t *testing.T) {
		tb := threeUpstreams()
		s, _, _ := runServer(t, tb, func(c *Config) { c.Coalesce, c.MaxDelay = 50*time.Millisecond, 150*time.Millisecond })
		pushes := func() float64 { return testutil.ToFloat64(s.m.pushes) }
		vtestutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool { return pushes() > 0 }, "the first push")
		base := pushes()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		snap := tb.Snapshot()
		const most = 2000 // 20 s of changes at most: a hang, not a speed, fails
		i := 0
		for ; i < most && pushes()-base < 2; i++ {
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
			t.Fatalf("%g pushes during %d changes 10 ms apart (coalesce 50 ms, max_delay 150 ms), want at least 2", got, i)
		}
		t.Logf("2 pushes after %d changes", i)
	})
}
