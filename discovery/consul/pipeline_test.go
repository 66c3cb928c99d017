package consul_test

import (
	"context"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/discovery/consul"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// pipeline is vigil's discovery path: Consul discovery -> Manager -> (every instance probed
// healthy) -> table, as cmd/vigil wires it but with the checker's verdicts fixed.
type pipeline struct {
	tbl  *table.Table
	d    *consul.Discovery
	reg  *prometheus.Registry
	stop context.CancelFunc
}

func newPipeline(t testing.TB, cfg consul.Config, ups map[string]consul.Upstream, stateFile string) *pipeline {
	t.Helper()
	p := &pipeline{tbl: table.New(table.Config{Default: table.DefaultPolicy()}), reg: prometheus.NewRegistry()}
	m := consul.NewMetrics(p.reg)
	client := must[*consulClient](t)(consul.NewClient(cfg, m))
	p.d = must[*consul.Discovery](t)(consul.NewDiscovery(consul.Options{Config: cfg, Upstreams: ups, Client: client, Metrics: m}))
	mgr := discovery.NewManager(discovery.ManagerOptions{StateFile: stateFile})
	mgr.Register("consul", p.d)
	p.stop = run(t, func(ctx context.Context) {
		done := make(chan struct{})
		go func() { defer close(done); mgr.Run(ctx) }()
		go p.d.TrackTable(ctx, trackedTable{p.tbl})
		for {
			select {
			case <-ctx.Done():
				<-done
				return
			case mem := <-mgr.SyncCh():
				st := map[discovery.Key]health.Status{}
				for _, u := range mem.Upstreams {
					for _, in := range u.Instances {
						st[discovery.Key{Upstream: u.Name, ID: in.ID}] = health.Status{State: health.Healthy}
					}
				}
				p.tbl.SetMembership(mem, st)
			}
		}
	})
	return p
}

// served returns the IDs of the instances of upstream that traffic may go to, sorted.
func (p *pipeline) served(upstream string) []string {
	u := p.tbl.Snapshot().Lookup(upstream)
	if u == nil {
		return nil
	}
	ids := []string{}
	for _, in := range u.Served {
		ids = append(ids, in.ID)
	}
	sort.Strings(ids)
	return ids
}

func (p *pipeline) instance(upstream, id string) *table.Instance {
	u := p.tbl.Snapshot().Lookup(upstream)
	if u == nil {
		return nil
	}
	for i := range u.Instances {
		if u.Instances[i].ID == id {
			return &u.Instances[i]
		}
	}
	return nil
}

// waitServed waits until exactly ids are served for upstream.
func (p *pipeline) waitServed(t testing.TB, timeout time.Duration, upstream string, ids ...string) {
	t.Helper()
	sort.Strings(ids)
	if ids == nil {
		ids = []string{}
	}
	var got []string
	testutil.Eventually(t, timeout, 10*time.Millisecond, func() bool {
		got = p.served(upstream)
		return slices.Equal(got, ids)
	}, "served "+upstream+" = ["+strings.Join(ids, " ")+"]")
}

// counter sums the values of a metric family whose labels match.
func (p *pipeline) metric(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	return testutil.Metric(t, p.reg, name, labels)
}

// trackedTable adapts the table to consul.Table, as cmd/vigil does.
type trackedTable struct{ t *table.Table }

func (t trackedTable) View() consul.TableView               { return t.t.Snapshot() }
func (t trackedTable) Subscribe() (<-chan struct{}, func()) { return t.t.Subscribe() }
