package consul_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/discovery/consul"
	"github.com/vigil-sidecar/vigil/internal/testutil"
)

const (
	benchUpstreams = 100
	benchChanges   = 15
)

// The blocking-query wait and the steady-state window; VIGIL_BENCH_CONSUL_WAIT and
// VIGIL_BENCH_CONSUL_WINDOW override them (e.g. 60s and 3m for the default wait).
var (
	benchWait   = envDuration("VIGIL_BENCH_CONSUL_WAIT", 10*time.Second)
	benchWindow = envDuration("VIGIL_BENCH_CONSUL_WINDOW", time.Minute)
)

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil && d > 0 {
		return d
	}
	return def
}

// BenchmarkConsulWatch100 measures, for one vigil watching 100 upstreams (2 instances each) in a
// single-server Consul with a data dir: the requests per minute it makes in steady state, in the
// minute after a Consul restart (and the busiest second of it), and the time from a change in
// Consul to vigil's table next to the time a raw blocking query on the same service sees it.
func BenchmarkConsulWatch100(b *testing.B) {
	for range b.N {
		benchConsulWatch(b)
	}
}

func benchConsulWatch(b *testing.B) {
	a := newAgent(b, agentOpts{server: true, extra: []string{"-bootstrap-expect", "1"}})
	a.start(true)
	c := a.client()
	ups := map[string]consul.Upstream{}
	for i := range benchUpstreams {
		name := fmt.Sprintf("svc-%03d", i)
		ups[name] = consul.Upstream{}
		for j := range 2 {
			id := fmt.Sprintf("%s-%d", name, j)
			err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: name, Address: "127.0.0.1", Port: 10000 + 2*i + j,
				Check: &api.AgentServiceCheck{CheckID: "check:" + id, TTL: "1h", Status: api.HealthPassing}})
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	cfg := a.vigilConfig()
	def := consul.DefaultConfig()
	cfg.MinInterval, cfg.BackoffBase, cfg.BackoffMax = def.MinInterval, def.BackoffBase, def.BackoffMax
	cfg.WaitTime = benchWait
	p := newPipeline(b, cfg, ups, "")
	testutil.Eventually(b, time.Minute, 50*time.Millisecond, func() bool {
		s := p.tbl.Snapshot()
		for n := range ups {
			if u := s.Lookup(n); u == nil || len(u.Served) != 2 {
				return false
			}
		}
		return true
	}, "all 100 upstreams in the table")
	requests := func(outcomes ...string) float64 {
		sum := 0.0
		for _, o := range outcomes {
			sum += p.metric(b, "vigil_consul_requests_total", map[string]string{"endpoint": "/v1/health/service", "outcome": o})
		}
		return sum
	}
	all := []string{"ok", "4xx", "5xx", "error"}

	// Steady state: requests counted over the window, and the rate from the mean time a watch's
	// blocking query waits (exact in steady state; the window count depends on where the rounds
	// of 100 queries fall).
	b.ResetTimer()
	waitSum := func() (sum, n float64) {
		return histSum(b, p, "vigil_consul_blocking_query_wait_seconds"), p.metric(b, "vigil_consul_blocking_query_wait_seconds", nil)
	}
	r0 := requests(all...)
	s0, n0 := waitSum()
	t0 := time.Now()
	sleepFor(benchWindow)
	steady := (requests(all...) - r0) * float64(time.Minute) / float64(time.Since(t0))
	s1, n1 := waitSum()
	period := (s1 - s0) / (n1 - n0)
	steadyRate := benchUpstreams * 60 / period

	// Restart: stop Consul, start it again 5s later; count from the stop to one minute after the start.
	r0, ok0 := requests(all...), requests("ok")
	a.stop(syscall.SIGTERM)
	sleepFor(5 * time.Second)
	down := requests(all...) - r0
	a.start(true)
	up := time.Now()
	r1 := requests(all...)
	peak, last := 0.0, r1
	for time.Since(up) < time.Minute {
		sleepFor(time.Second)
		n := requests(all...)
		peak = max(peak, n-last)
		last = n
	}
	after := last - r1
	reached := requests("ok") - ok0

	// Change to table, next to a raw blocking query on the same service.
	b.Logf("steady %.0f req/min (rate from a mean blocking wait of %.2fs: %.0f req/min); outage (5s) %.0f req; after restart %.0f req/min, peak %.0f req/s; reached Consul %.0f",
		steady, period, steadyRate, down, after, peak, reached)
	var vigilLat, rawLat []time.Duration
	for i := range benchChanges {
		name := fmt.Sprintf("svc-%03d", i)
		id := name + "-0"
		// Start from passing (a restarted agent may have restored the TTL check as critical).
		if err := c.Agent().UpdateTTL("check:"+id, "bench", api.HealthPassing); err != nil {
			b.Fatal(err)
		}
		ch, cancel := p.tbl.Subscribe()
		waitTable(b, p, ch, name, "dc1/"+a.name+"/"+id, discovery.Passing)
		sleepFor(1200 * time.Millisecond) // beyond min_interval: measure the watch, not the storm guard
		_, meta, err := c.Health().Service(name, "", false, nil)
		if err != nil {
			b.Fatal(err)
		}
		rawDone := make(chan time.Time, 1)
		go func() {
			for {
				es, m, err := c.Health().Service(name, "", false, &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 30 * time.Second})
				if err != nil {
					rawDone <- time.Time{}
					return
				}
				for _, e := range es {
					if e.Service.ID == id && e.Checks.AggregatedStatus() == api.HealthCritical {
						rawDone <- time.Now()
						return
					}
				}
				meta = m
			}
		}()
		start := time.Now()
		if err := c.Agent().UpdateTTL("check:"+id, "bench", api.HealthCritical); err != nil {
			b.Fatal(err)
		}
		vigilAt := waitTable(b, p, ch, name, "dc1/"+a.name+"/"+id, discovery.Critical)
		cancel()
		rawAt := <-rawDone
		if rawAt.IsZero() {
			b.Fatal("raw blocking query failed")
		}
		vigilLat = append(vigilLat, vigilAt.Sub(start))
		rawLat = append(rawLat, rawAt.Sub(start))
	}
	b.StopTimer()
	b.ReportMetric(steady, "req/min-steady-window")
	b.ReportMetric(steadyRate, "req/min-steady-rate")
	b.ReportMetric(period, "s-mean-blocking-wait")
	b.ReportMetric(down, "req-during-5s-outage")
	b.ReportMetric(after, "req/min-after-restart")
	b.ReportMetric(peak, "req/s-peak-after-restart")
	b.ReportMetric(reached, "req-ok-outage+minute")
	b.ReportMetric(ms(median(vigilLat)), "ms-change-to-table-p50")
	b.ReportMetric(ms(median(rawLat)), "ms-raw-blocking-query-p50")
	b.ReportMetric(ms(slices.Max(vigilLat)), "ms-change-to-table-max")
	b.ReportMetric(ms(slices.Max(rawLat)), "ms-raw-blocking-query-max")
}

// waitTable waits for the table to show the instance with the given Consul health; it returns when.
func waitTable(b *testing.B, p *pipeline, ch <-chan struct{}, upstream, id string, h discovery.Health) time.Time {
	timeout := time.After(30 * time.Second)
	for {
		if in := p.instance(upstream, id); in != nil && in.Health == h {
			return time.Now()
		}
		select {
		case <-ch:
		case <-timeout:
			b.Fatalf("%s/%s not %s in the table within 30s", upstream, id, h)
		}
	}
}

// sleepFor lets a measurement window pass (a benchmark's clock, not test synchronisation).
func sleepFor(d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	<-ctx.Done()
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func histSum(b *testing.B, p *pipeline, name string) float64 {
	mfs, err := p.reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetHistogram().GetSampleSum()
			}
		}
	}
	return sum
}
