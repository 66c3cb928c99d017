package consul_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/discovery/consul"
	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// TestAgentRestart: the agent is killed and restarted (a dev agent: it loses its state). While it
// is down, vigil keeps the membership and reports staleness; when it is back, vigil registers the
// local service again and the membership follows Consul again.
func TestAgentRestart(t *testing.T) {
	a := newAgent(t, agentOpts{})
	a.start(true)
	a.register("api", "api-1", 9001, "", nil)
	a.register("api", "api-2", 9002, "", nil)
	ids := []string{"dc1/node-dc1/api-1", "dc1/node-dc1/api-2"}
	cfg := a.vigilConfig()
	cfg.WaitTime = 10 * time.Minute // the restarted agent's index is lower: only a reset sees changes soon
	p := newPipeline(t, cfg, map[string]consul.Upstream{"api": {}}, "")
	p.waitServed(t, wait, "api", ids...)

	m := consul.NewMetrics(prometheus.NewRegistry())
	fc := &fakeStatus{}
	r := must[*consul.Registration](t)(consul.NewRegistration(consul.RegistrationOptions{
		Service: testService(), Client: must[*consulClient](t)(consul.NewClient(a.vigilConfig(), m)),
		Status: fc, Metrics: m,
	}))
	run(t, func(ctx context.Context) { r.Run(ctx) })
	fc.set(true)
	c := a.client()
	testutil.Eventually(t, wait, 20*time.Millisecond, func() bool {
		return checkStatus(t, c, "web", r.CheckID()) == api.HealthPassing
	}, "registration passing")

	a.kill()
	// Down: the membership is kept while the staleness grows.
	testutil.Eventually(t, wait, 20*time.Millisecond, func() bool {
		if got := p.served("api"); !slices.Equal(got, ids) {
			t.Fatalf("while Consul is down, served = %v, want %v", got, ids)
		}
		return p.metric(t, "vigil_consul_staleness_seconds", map[string]string{"upstream": "api"}) > 0.5
	}, "staleness above 0.5s while Consul is down")
	if got := p.served("api"); !slices.Equal(got, ids) {
		t.Fatalf("while Consul is down, served = %v, want %v", got, ids)
	}
	// The table (and so /v1/upstreams) carries the time of the last successful sync.
	testutil.Eventually(t, wait, 20*time.Millisecond, func() bool {
		u := p.tbl.Snapshot().Lookup("api")
		return u != nil && !u.Synced.IsZero() && time.Since(u.Synced) > 500*time.Millisecond
	}, "table shows the last sync time while Consul is down")

	a.start(true)
	// The local service is registered again, passing; the upstream follows the new (empty) state.
	testutil.Eventually(t, wait, 20*time.Millisecond, func() bool {
		return checkStatus(t, c, "web", r.CheckID()) == api.HealthPassing
	}, "registration restored after the agent restart")
	a.register("api", "api-1", 9001, "", nil)
	a.register("api", "api-3", 9003, "", nil)
	p.waitServed(t, wait, "api", "dc1/node-dc1/api-1", "dc1/node-dc1/api-3")
	testutil.Eventually(t, wait, 20*time.Millisecond, func() bool {
		return p.metric(t, "vigil_consul_staleness_seconds", map[string]string{"upstream": "api"}) == 0 &&
			p.tbl.Snapshot().Lookup("api").Synced.IsZero()
	}, "staleness back to 0, in the metric and in the table")
	// The restarted agent's index is lower than the last one seen: the watch must start over and
	// block again, not spin on an index Consul answers at once.
	health := map[string]string{"endpoint": "/v1/health/service"}
	n0 := p.metric(t, "vigil_consul_requests_total", health)
	sleepFor(time.Second) // a measurement window
	if n := p.metric(t, "vigil_consul_requests_total", health) - n0; n > 3 {
		t.Errorf("%v health queries in 1s after the restart, want the watch blocking again", n)
	}
}

// TestRestartWhileConsulDown: vigil persisted the membership; Consul goes away entirely and vigil
// restarts: it serves the persisted membership, and picks Consul up again when it comes back.
func TestRestartWhileConsulDown(t *testing.T) {
	a := newAgent(t, agentOpts{})
	a.start(true)
	a.register("api", "api-1", 9001, "", nil)
	a.register("api", "api-2", 9002, "", nil)
	ids := []string{"dc1/node-dc1/api-1", "dc1/node-dc1/api-2"}
	state := filepath.Join(t.TempDir(), "membership.json")
	p := newPipeline(t, a.vigilConfig(), map[string]consul.Upstream{"api": {}}, state)
	p.waitServed(t, wait, "api", ids...)
	testutil.Eventually(t, wait, 20*time.Millisecond, func() bool {
		b, _ := os.ReadFile(state)
		return strings.Contains(string(b), "api-1") && strings.Contains(string(b), "api-2")
	}, "membership persisted")
	p.stop()
	a.kill()

	p2 := newPipeline(t, a.vigilConfig(), map[string]consul.Upstream{"api": {}}, state)
	p2.waitServed(t, wait, "api", ids...)
	testutil.Eventually(t, wait, 10*time.Millisecond, func() bool { return p2.tbl.Snapshot().Ready }, "ready from the persisted state")
	if u := p2.tbl.Snapshot().Lookup("api"); u.Synced.IsZero() || time.Since(u.Synced) < 0 {
		t.Errorf("synced = %v, want the persisted sync time", u.Synced)
	}
	testutil.Eventually(t, wait, 20*time.Millisecond, func() bool {
		return p2.metric(t, "vigil_consul_staleness_seconds", map[string]string{"upstream": "api"}) > 0
	}, "staleness reported")

	a.start(true)
	a.register("api", "api-3", 9003, "", nil)
	p2.waitServed(t, wait, "api", "dc1/node-dc1/api-3")
}

// TestLeaderLoss: in a 3-server cluster on 127.0.0.1-3, the leader is killed: no instance is lost
// from the table at any time, and the watches continue with the new leader.
func TestLeaderLoss(t *testing.T) {
	first := newAgent(t, agentOpts{name: "s1", ip: "127.0.0.1", server: true})
	join := "127.0.0.1:" + itoa(first.serfLAN)
	servers := []*agent{first,
		newAgent(t, agentOpts{name: "s2", ip: "127.0.0.2", server: true}),
		newAgent(t, agentOpts{name: "s3", ip: "127.0.0.3", server: true}),
	}
	for _, s := range servers {
		s.extra = []string{"-bootstrap-expect", "3", "-retry-join", join, "-retry-interval", "1s"}
		s.spawn()
	}
	for _, s := range servers {
		s.waitUp(true)
	}
	leaderAddr, err := first.client().Status().Leader()
	if err != nil {
		t.Fatal(err)
	}
	var leader *agent
	var followers []*agent
	for _, s := range servers {
		if strings.HasPrefix(leaderAddr, s.ip+":") {
			leader = s
		} else {
			followers = append(followers, s)
		}
	}
	if leader == nil || len(followers) != 2 {
		t.Fatalf("leader %q not among the servers", leaderAddr)
	}
	// Instances live on the followers' nodes (an instance on the killed node would rightly go critical).
	followers[0].register("api", "api-1", 9001, "", nil)
	followers[0].register("api", "api-2", 9002, "", nil)
	followers[1].register("api", "api-3", 9003, "", nil)
	id := func(a *agent, s string) string { return "dc1/" + a.name + "/" + s }
	ids := []string{id(followers[0], "api-1"), id(followers[0], "api-2"), id(followers[1], "api-3")}
	cfg := followers[0].vigilConfig() // vigil's local agent is a follower
	p := newPipeline(t, cfg, map[string]consul.Upstream{"api": {}}, "")
	p.waitServed(t, 30*time.Second, "api", ids...)

	// Watch every snapshot from now on: none may lose an instance.
	var mu sync.Mutex
	var lost []string
	ch, cancel := p.tbl.Subscribe()
	defer cancel()
	run(t, func(ctx context.Context) {
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				if got := p.served("api"); len(got) < 3 {
					mu.Lock()
					lost = append(lost, strings.Join(got, ","))
					mu.Unlock()
				}
			}
		}
	})

	leader.kill()
	fc := followers[0].client()
	testutil.Eventually(t, 60*time.Second, 100*time.Millisecond, func() bool {
		l, err := fc.Status().Leader()
		return err == nil && l != "" && l != leaderAddr
	}, "a new leader")
	followers[1].register("api", "api-4", 9004, "", nil)
	p.waitServed(t, 30*time.Second, "api", append(ids, id(followers[1], "api-4"))...)
	mu.Lock()
	defer mu.Unlock()
	if len(lost) > 0 {
		t.Errorf("instances lost during the leader change: %q", lost)
	}
}

// TestFailoverToSecondDatacenter: an upstream with a fallback datacenter (a second Consul datacenter
// joined over the WAN) is served from it while the local datacenter has no healthy instance, at a
// lower priority, and from the local one again when it recovers.
func TestFailoverToSecondDatacenter(t *testing.T) {
	dc1 := newAgent(t, agentOpts{dc: "dc1"})
	dc1.start(true)
	dc2 := newAgent(t, agentOpts{dc: "dc2"})
	dc2.extra = []string{"-retry-join-wan", "127.0.0.1:" + itoa(dc1.serfWAN), "-retry-interval-wan", "1s"}
	dc2.start(true)
	c := dc1.client()
	testutil.Eventually(t, 30*time.Second, 100*time.Millisecond, func() bool {
		dcs, err := c.Catalog().Datacenters()
		return err == nil && slices.Contains(dcs, "dc2")
	}, "dc2 joined over the WAN")
	dc1.register("api", "api-1", 9001, api.HealthPassing, nil)
	dc2.register("api", "api-b1", 9101, api.HealthPassing, nil)
	dc2.register("api", "api-b2", 9102, api.HealthPassing, nil)

	p := newPipeline(t, dc1.vigilConfig(), map[string]consul.Upstream{"api": {Datacenter: "dc1", FallbackDatacenters: []string{"dc2"}}}, "")
	local := "dc1/node-dc1/api-1"
	remote := []string{"dc2/node-dc2/api-b1", "dc2/node-dc2/api-b2"}
	p.waitServed(t, wait, "api", local)
	testutil.Eventually(t, wait, 10*time.Millisecond, func() bool { return p.instance("api", remote[0]) != nil },
		"dc2 instances known")
	if in := p.instance("api", remote[0]); in.Failover != 1 || in.Datacenter != "dc2" {
		t.Errorf("dc2 instance = %+v, want failover 1", in.Instance)
	}

	dc1.setCheck("api-1", api.HealthCritical)
	p.waitServed(t, wait, "api", remote...)
	if u := p.tbl.Snapshot().Lookup("api"); u.Failover != 1 {
		t.Errorf("failover level = %d, want 1", u.Failover)
	}
	dc1.setCheck("api-1", api.HealthPassing)
	p.waitServed(t, wait, "api", local)
	if u := p.tbl.Snapshot().Lookup("api"); u.Failover != 0 {
		t.Errorf("failover level = %d, want 0", u.Failover)
	}
}
