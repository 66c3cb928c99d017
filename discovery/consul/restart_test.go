package consul_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/discovery/consul"
)

// TestRestartedServerStaleAnswer: after a Consul outage, a restarted server answers stale reads
// from the little it has applied so far (here: nothing, knowing no leader, at a lower index).
// The watch asks the leader consistently instead, and never drops the instances it had.
func TestRestartedServerStaleAnswer(t *testing.T) {
	const entry = `[{"Node": {"Node": "n1", "Address": "127.0.0.1", "Datacenter": "dc1"},
		"Service": {"ID": "api-1", "Service": "api", "Address": "127.0.0.1", "Port": 8080, "Weights": {"Passing": 1}},
		"Checks": []}]`
	var phase atomic.Int32 // 0: in sync, 1: down, 2: back, with a server still catching up
	var consistentAsked atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/v1/health/service/api") {
			http.NotFound(w, r)
			return
		}
		_, consistent := r.URL.Query()["consistent"]
		switch p := phase.Load(); {
		case p == 1:
			http.Error(w, "rpc error: No cluster leader", http.StatusInternalServerError)
			return
		case p == 2 && !consistent:
			w.Header().Set("X-Consul-Index", "3")
			w.Header().Set("X-Consul-KnownLeader", "false")
			fmt.Fprint(w, `[]`)
			return
		case p == 2:
			consistentAsked.Add(1)
			w.Header().Set("X-Consul-Index", "12")
		default:
			w.Header().Set("X-Consul-Index", "10")
		}
		w.Header().Set("X-Consul-KnownLeader", "true")
		if r.URL.Query().Get("index") == w.Header().Get("X-Consul-Index") {
			time.Sleep(20 * time.Millisecond) // a short blocking query
		}
		fmt.Fprint(w, entry)
	}))
	defer srv.Close()
	cfg := consul.DefaultConfig()
	cfg.Address = strings.TrimPrefix(srv.URL, "http://")
	cfg.MinInterval, cfg.BackoffBase, cfg.BackoffMax = 5*time.Millisecond, 5*time.Millisecond, 20*time.Millisecond
	d := must[*consul.Discovery](t)(consul.NewDiscovery(consul.Options{
		Config: cfg, Upstreams: map[string]consul.Upstream{"api": {}},
		Client: must[*consulClient](t)(consul.NewClient(cfg, nil)),
	}))
	up := make(chan []discovery.Group, 16)
	run(t, func(ctx context.Context) { d.Run(ctx, up) })
	// sizes reads the groups sent for api until want is seen, failing on an empty one.
	sizes := func(want func(discovery.Group) bool, what string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case gs := <-up:
				for _, g := range gs {
					if g.Upstream != "api" {
						continue
					}
					if len(g.Instances) == 0 {
						t.Fatalf("%s: api sent with no instance: %+v", what, g)
					}
					if want(g) {
						return
					}
				}
			case <-deadline:
				t.Fatalf("%s: not seen within 10s", what)
			}
		}
	}
	sizes(func(g discovery.Group) bool { return g.Synced.IsZero() }, "in sync")
	phase.Store(1)
	sizes(func(g discovery.Group) bool { return !g.Synced.IsZero() }, "marked stale while Consul is down")
	phase.Store(2)
	sizes(func(g discovery.Group) bool { return g.Synced.IsZero() }, "in sync again")
	if consistentAsked.Load() == 0 {
		t.Error("the leader was never asked after the outage")
	}
}
