package consul_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/discovery/consul"
	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// hungAgent listens on 127.0.0.1, accepts connections and never answers; it returns the address.
func hungAgent(t *testing.T) string { return testutil.Listener(t) }

// TestDrainInterruptsHungWrite: a heartbeat in flight to a frozen agent does not hold up Drain,
// which returns within its own ctx and still deregisters the service.
func TestDrainInterruptsHungWrite(t *testing.T) {
	var updates atomic.Int32
	var deregistered atomic.Bool
	hung := make(chan struct{}, 1)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/v1/agent/check/update/") && updates.Add(1) >= 3:
			select {
			case hung <- struct{}{}:
			default:
			}
			select { // frozen until the test ends or the client gives up
			case <-release:
			case <-r.Context().Done():
			}
			return
		case strings.HasPrefix(r.URL.Path, "/v1/agent/service/deregister/"):
			deregistered.Store(true)
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	defer close(release)
	cfg := consul.DefaultConfig()
	cfg.Address = strings.TrimPrefix(srv.URL, "http://")
	s := testService()
	s.Heartbeat, s.Drain = 50*time.Millisecond, 100*time.Millisecond
	r := must[*consul.Registration](t)(consul.NewRegistration(consul.RegistrationOptions{
		Service: s, Client: must[*consulClient](t)(consul.NewClient(cfg, nil)),
	}))
	run(t, func(ctx context.Context) { r.Run(ctx) })
	select {
	case <-hung:
	case <-time.After(wait):
		t.Fatal("no heartbeat reached the agent")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ret := make(chan error, 1)
	go func() { ret <- r.Drain(ctx) }()
	select {
	case <-ret:
	case <-time.After(5 * time.Second):
		t.Fatal("Drain with a 1s ctx still blocked after 5s behind a heartbeat in flight")
	}
	if !deregistered.Load() {
		t.Error("Drain did not deregister the service")
	}
}

// TestHungAgent: an agent that accepts connections but never answers counts as a failure: the
// first full set is sent (keeping the configured upstreams and, with a catalog filter, every
// persisted discovered one), and the watch reports staleness.
func TestHungAgent(t *testing.T) {
	cfg := consul.DefaultConfig()
	cfg.Address = hungAgent(t)
	cfg.WaitTime = 100 * time.Millisecond
	cfg.Catalog.Filter = `"vigil" in ServiceTags`
	p := newPipeline(t, cfg, map[string]consul.Upstream{"api": {}}, "")
	d := must[*consul.Discovery](t)(consul.NewDiscovery(consul.Options{
		Config: cfg, Upstreams: map[string]consul.Upstream{"api": {}},
		Client: must[*consulClient](t)(consul.NewClient(cfg, nil)),
	}))
	up := make(chan []discovery.Group)
	run(t, func(ctx context.Context) { d.Run(ctx, up) })
	select {
	case gs := <-up:
		want := []discovery.Group{{Keep: true}, {Source: "api/local", Upstream: "api", Keep: true}}
		if len(gs) != len(want) || gs[0].Source != "" || !gs[0].Keep || gs[1].Source != "api/local" || !gs[1].Keep {
			t.Errorf("first send %+v, want %+v", gs, want)
		}
	case <-time.After(3 * wait):
		t.Fatal("no first full set while the agent hangs")
	}
	testutil.Eventually(t, 3*wait, 20*time.Millisecond, func() bool { return p.tbl.Snapshot().Ready }, "ready")
	testutil.Eventually(t, wait, 20*time.Millisecond, func() bool {
		return p.metric(t, "vigil_consul_staleness_seconds", map[string]string{"upstream": "api"}) > 0
	}, "staleness reported")
}

// TestCatalogUpstreamsKeptWhileConsulDown: vigil restarts while Consul is down; the persisted
// catalog-discovered upstreams are served, as the configured ones are.
func TestCatalogUpstreamsKeptWhileConsulDown(t *testing.T) {
	state := filepath.Join(t.TempDir(), "m.json")
	now := time.Now().UTC().Format(time.RFC3339Nano)
	js := `{"saved":"` + now + `","groups":[
 {"source":"consul/api/local","upstream":"api","instances":[{"id":"dc1/n/api-1","address":"127.0.0.1","port":81,"weight":1,"health":"passing"}]},
 {"source":"consul/web/local","upstream":"web","instances":[{"id":"dc1/n/web-1","address":"127.0.0.1","port":80,"weight":1,"health":"passing"}]}]}`
	if err := os.WriteFile(state, []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := consul.DefaultConfig()
	cfg.Address = "127.0.0.1:1"
	cfg.Catalog.Filter = `"vigil" in ServiceTags`
	p := newPipeline(t, cfg, map[string]consul.Upstream{"api": {}}, state)
	testutil.Eventually(t, wait, 10*time.Millisecond, func() bool { return p.tbl.Snapshot().Ready }, "ready")
	p.waitServed(t, wait, "api", "dc1/n/api-1")
	p.waitServed(t, wait, "web", "dc1/n/web-1")
}

// TestUnconfiguredCatalogUpstream: an upstream both configured and matched by the catalog filter
// is watched as discovered once a reload removes it from the configuration.
func TestUnconfiguredCatalogUpstream(t *testing.T) {
	a := newAgent(t, agentOpts{})
	a.start(true)
	c := a.client()
	reg := func(id string, port int) {
		t.Helper()
		err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: "api", Address: "127.0.0.1", Port: port, Tags: []string{"public"}})
		if err != nil {
			t.Fatal(err)
		}
	}
	reg("api-1", 9001)
	cfg := a.vigilConfig()
	cfg.Catalog.Filter = `ServiceTags contains "public"`
	p := newPipeline(t, cfg, map[string]consul.Upstream{"api": {}}, "")
	p.waitServed(t, wait, "api", "dc1/node-dc1/api-1")
	p.d.Set(map[string]consul.Upstream{})
	reg("api-2", 9002) // seen only if a watch of api runs after the reload
	p.waitServed(t, wait, "api", "dc1/node-dc1/api-1", "dc1/node-dc1/api-2")
}
