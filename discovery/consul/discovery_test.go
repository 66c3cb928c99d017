package consul_test

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/discovery/consul"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

const wait = 15 * time.Second

// TestMembershipFollowsConsul: instances appear and disappear in the table as they are registered
// and deregistered in a real Consul; a Consul-side critical check takes one out of service;
// maintenance drains it; zone and weight come from meta and weights.
func TestMembershipFollowsConsul(t *testing.T) {
	a := newAgent(t, agentOpts{})
	a.start(true)
	a.register("api", "api-1", 9001, "passing", nil)
	a.register("api", "api-2", 9002, "passing", map[string]string{"zone": "zone-b"})
	a.register("db", "db-1", 9101, "", nil)

	p := newPipeline(t, a.vigilConfig(), map[string]consul.Upstream{"api": {}, "postgres": {Service: "db"}}, "")
	id := func(s string) string { return "dc1/node-dc1/" + s }
	p.waitServed(t, wait, "api", id("api-1"), id("api-2"))
	p.waitServed(t, wait, "postgres", id("db-1"))

	in := p.instance("api", id("api-2"))
	if in.Zone != "zone-b" || in.Datacenter != "dc1" || in.Port != 9002 || in.Address != "127.0.0.1" || in.Weight != 1 || in.Failover != 0 {
		t.Errorf("api-2 = %+v", in.Instance)
	}

	t.Run("registered appears", func(t *testing.T) {
		err := a.client().Agent().ServiceRegister(&api.AgentServiceRegistration{
			ID: "api-3", Name: "api", Address: "127.0.0.1", Port: 9003, Weights: &api.AgentWeights{Passing: 5, Warning: 1},
		})
		if err != nil {
			t.Fatal(err)
		}
		p.waitServed(t, wait, "api", id("api-1"), id("api-2"), id("api-3"))
		if w := p.instance("api", id("api-3")).Weight; w != 5 {
			t.Errorf("api-3 weight = %d, want 5", w)
		}
	})
	t.Run("deregistered disappears", func(t *testing.T) {
		a.deregister("api-1")
		p.waitServed(t, wait, "api", id("api-2"), id("api-3"))
		if p.instance("api", id("api-1")) != nil {
			t.Error("api-1 still in the table")
		}
	})
	t.Run("critical in consul is not served", func(t *testing.T) {
		a.setCheck("api-2", api.HealthCritical)
		p.waitServed(t, wait, "api", id("api-3"))
		in := p.instance("api", id("api-2"))
		if in == nil || in.State != table.Unhealthy || in.Health != discovery.Critical {
			t.Fatalf("api-2 = %+v, want unhealthy from a critical Consul check", in)
		}
		a.setCheck("api-2", api.HealthWarning) // warning counts as passing by default
		p.waitServed(t, wait, "api", id("api-2"), id("api-3"))
		a.setCheck("api-2", api.HealthPassing)
	})
	t.Run("maintenance drains", func(t *testing.T) {
		if err := a.client().Agent().EnableServiceMaintenance("api-3", "test"); err != nil {
			t.Fatal(err)
		}
		p.waitServed(t, wait, "api", id("api-2"))
		if in := p.instance("api", id("api-3")); in == nil || in.State != table.Draining {
			t.Fatalf("api-3 = %+v, want draining", in)
		}
		if err := a.client().Agent().DisableServiceMaintenance("api-3"); err != nil {
			t.Fatal(err)
		}
		p.waitServed(t, wait, "api", id("api-2"), id("api-3"))
	})
	t.Run("metrics", func(t *testing.T) {
		if n := p.metric(t, "vigil_consul_requests_total", map[string]string{"endpoint": "/v1/health/service", "outcome": "ok"}); n < 4 {
			t.Errorf("health requests = %v, want several", n)
		}
		if n := p.metric(t, "vigil_consul_staleness_seconds", map[string]string{"upstream": "api"}); n != 0 {
			t.Errorf("staleness = %v while in sync, want 0", n)
		}
		testutil.Eventually(t, wait, 10*time.Millisecond, func() bool {
			return p.metric(t, "vigil_consul_change_to_table_seconds", nil) >= 4
		}, "change-to-table observations")
		testutil.CheckMetrics(t, testutil.Exposition(t, p.reg))
	})
}

// TestWarningIsNotPassing: with warning_is_passing false, an instance in warning is not served.
func TestWarningIsNotPassing(t *testing.T) {
	a := newAgent(t, agentOpts{})
	a.start(true)
	a.register("api", "api-1", 9001, api.HealthWarning, nil)
	a.register("api", "api-2", 9002, api.HealthPassing, nil)
	cfg := a.vigilConfig()
	cfg.WarningIsPassing = false
	p := newPipeline(t, cfg, map[string]consul.Upstream{"api": {}}, "")
	p.waitServed(t, wait, "api", "dc1/node-dc1/api-2")
}

// TestCatalogFilter: upstreams are discovered by a filter over the catalog, and removed when
// they no longer match.
func TestCatalogFilter(t *testing.T) {
	a := newAgent(t, agentOpts{})
	a.start(true)
	c := a.client()
	reg := func(name, id string, port int, tags ...string) {
		t.Helper()
		err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: name, Address: "127.0.0.1", Port: port, Tags: tags})
		if err != nil {
			t.Fatal(err)
		}
	}
	reg("billing", "billing-1", 9201, "public")
	reg("internal", "internal-1", 9301)
	cfg := a.vigilConfig()
	cfg.Catalog.Filter = `ServiceTags contains "public"`
	p := newPipeline(t, cfg, map[string]consul.Upstream{"api": {}}, "")
	p.waitServed(t, wait, "billing", "dc1/node-dc1/billing-1")
	reg("search", "search-1", 9401, "public")
	p.waitServed(t, wait, "search", "dc1/node-dc1/search-1")
	if p.tbl.Snapshot().Lookup("internal") != nil {
		t.Error("internal discovered without the tag")
	}
	a.deregister("billing-1")
	testutil.Eventually(t, wait, 10*time.Millisecond, func() bool { return p.tbl.Snapshot().Lookup("billing") == nil },
		"billing gone")
}

// TestSet: a reload adds and removes watched upstreams; a changed upstream keeps its instances
// while Consul cannot be reached.
func TestSet(t *testing.T) {
	a := newAgent(t, agentOpts{})
	a.start(true)
	a.register("api", "api-1", 9001, "", nil)
	a.register("db", "db-1", 9101, "", nil)
	p := newPipeline(t, a.vigilConfig(), map[string]consul.Upstream{"api": {}}, "")
	p.waitServed(t, wait, "api", "dc1/node-dc1/api-1")
	p.d.Set(map[string]consul.Upstream{"api": {}, "db": {}})
	p.waitServed(t, wait, "db", "dc1/node-dc1/db-1")
	p.d.Set(map[string]consul.Upstream{"db": {}})
	testutil.Eventually(t, wait, 10*time.Millisecond, func() bool { return p.tbl.Snapshot().Lookup("api") == nil }, "api removed")
	a.kill()
	p.d.Set(map[string]consul.Upstream{"db": {Tag: "v2"}})
	testutil.Eventually(t, wait, 10*time.Millisecond, func() bool {
		return p.metric(t, "vigil_consul_staleness_seconds", map[string]string{"upstream": "db"}) > 0.2
	}, "the new db watch failing")
	p.waitServed(t, wait, "db", "dc1/node-dc1/db-1")
}

// TestNoUpstreams: a Discovery with nothing to watch still sends its (empty) first full set.
func TestNoUpstreams(t *testing.T) {
	cfg := consul.DefaultConfig()
	cfg.Address = "127.0.0.1:1"
	d := must[*consul.Discovery](t)(consul.NewDiscovery(consul.Options{Config: cfg, Client: must[*consulClient](t)(consul.NewClient(cfg, nil))}))
	up := make(chan []discovery.Group)
	run(t, func(ctx context.Context) { d.Run(ctx, up) })
	select {
	case gs := <-up:
		if len(gs) != 0 {
			t.Errorf("first send %v, want empty", gs)
		}
	case <-time.After(wait):
		t.Fatal("no first send")
	}
}
