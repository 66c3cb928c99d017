package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/admin"
	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
	"github.com/vigil-sidecar/vigil/xds"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// upstream is the one upstream the matrix drives.
const upstream = "api"

// member is one instance of a row: where it is and what the table is told about it.
type member struct {
	id       string // b0..b5: the backend it runs on
	zone     string // "" for zone a
	dc       string // "" for the local datacenter, dc1
	failover int
	source   discovery.Health // in the discovery source (Maintenance: draining)
	probe    health.State     // from the checker; health.Unknown: not probed yet
}

// row is one table state and the instances every frontend must serve for it, as priority groups.
type row struct {
	name    string
	policy  table.Policy
	members []member
	want    [][]string
}

func ok(id string) member              { return member{id: id, probe: health.Healthy} }
func down(id string) member            { return member{id: id, probe: health.Unhealthy} }
func inZone(z string, m member) member { m.zone = z; return m }
func inDC(dc string, failover int, m member) member {
	m.dc, m.failover = dc, failover
	return m
}

// matrix lists the rows in the order they are applied to one table. No two consecutive rows want
// the same instances, so that a frontend still showing the previous state cannot pass.
func matrix() []row {
	def := table.DefaultPolicy()
	panicOpen := table.Policy{PanicMode: table.FailOpen, PanicThreshold: 50, ZoneMinHealthy: 70}
	panicClosed := table.Policy{PanicMode: table.FailClosed, PanicThreshold: 50, ZoneMinHealthy: 70}
	zones := table.Policy{PanicMode: table.FailOpen, ZonePreference: true, ZoneMinHealthy: 70}
	draining := ok("b1")
	draining.source = discovery.Maintenance
	return []row{
		{"all healthy", def, []member{ok("b0"), ok("b1"), ok("b2")}, [][]string{{"b0", "b1", "b2"}}},
		{"one down", def, []member{ok("b0"), down("b1"), ok("b2")}, [][]string{{"b0", "b2"}}},
		{"panic fail_open", panicOpen, []member{ok("b0"), down("b1"), down("b2")}, [][]string{{"b0", "b1", "b2"}}},
		{"panic fail_closed", panicClosed, []member{ok("b0"), down("b1"), down("b2")}, [][]string{{"b0"}}},
		{"panic fail_closed, none healthy", panicClosed, []member{down("b0"), down("b1"), down("b2")}, nil},
		{"zone preferred", zones,
			[]member{inZone("a", ok("b0")), inZone("a", ok("b1")), inZone("b", ok("b2")), inZone("b", ok("b3"))},
			[][]string{{"b0", "b1"}, {"b2", "b3"}}},
		{"zone spill-over", zones,
			[]member{inZone("a", ok("b0")), inZone("a", down("b1")), inZone("b", ok("b2")), inZone("b", ok("b3"))},
			[][]string{{"b0", "b2", "b3"}}},
		{"local DC empty, fallback DC", def,
			[]member{down("b0"), down("b1"), inDC("dc2", 1, ok("b2")), inDC("dc2", 1, ok("b3"))},
			[][]string{{"b2", "b3"}}},
		{"draining", def, []member{ok("b0"), draining, ok("b2")}, [][]string{{"b0", "b2"}}},
		{"not yet probed", def, []member{{id: "b0"}, ok("b1"), ok("b2")}, [][]string{{"b1", "b2"}}},
		{"back to all healthy", def, []member{ok("b0"), ok("b1"), ok("b2"), ok("b3")}, [][]string{{"b0", "b1", "b2", "b3"}}},
	}
}

// A column is one frontend as its clients see it: the served instances of the upstream as
// priority groups, best first, each sorted. A client that routes (gRPC's xDS client, the
// forwarder) sees only where its traffic goes, the first group: routes is true for it.
type column struct {
	name    string
	routes  bool
	observe func() ([][]string, error)
}

// TestConsistencyMatrix drives one table through the matrix's states and checks that each
// frontend serves the same instances for every state: DNS as dig gets it, xDS as gRPC's own
// xDS client routes, and the admin JSON. A frontend is added as one more column.
func TestConsistencyMatrix(t *testing.T) {
	dig := testutil.Need(t, "dig")
	backends := startBackends(t, 4)
	tb := table.New(table.Config{Zone: "a", Default: table.DefaultPolicy()})

	cols := []column{
		dnsColumn(t, tb, dig, backends),
		xdsColumn(t, tb, backends),
		adminColumn(t, tb, backends),
	}
	rows := matrix()
	for i, r := range rows {
		if i > 0 && equalGroups(rows[i-1].want, r.want) {
			t.Fatalf("rows %q and %q want the same instances: a stale frontend would pass", rows[i-1].name, r.name)
		}
		apply(tb, r, backends)
		for _, c := range cols {
			want := r.want
			if c.routes && len(want) > 1 {
				want = want[:1]
			}
			if got, err := converge(c, want, 20*time.Second); err != nil || !equalGroups(got, want) {
				t.Fatalf("%s: %s serves %v, want %v (last error: %v)", r.name, c.name, got, want, err)
			}
		}
	}
}

// converge observes c until it shows want or timeout passes, and returns the last observation.
func converge(c column, want [][]string, timeout time.Duration) ([][]string, error) {
	deadline := time.After(timeout)
	for {
		got, err := c.observe()
		if err == nil && equalGroups(got, want) {
			return got, nil
		}
		select {
		case <-deadline:
			return got, err
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// apply sets the table to row r through its own API: policy, membership, then each probe
// result as the checker reports it (health.Sink).
func apply(tb *table.Table, r row, backends map[string]int) {
	tb.SetConfig(table.Config{Zone: "a", Default: r.policy})
	u := &discovery.Upstream{Name: upstream}
	for _, m := range r.members {
		u.Instances = append(u.Instances, discovery.Instance{
			ID: m.id, Address: "127.0.0.1", Port: backends[m.id], Weight: 1,
			Zone: m.zone, Datacenter: cmpOr(m.dc, "dc1"), Failover: m.failover, Health: m.source,
		})
	}
	tb.SetMembership(discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{upstream: u}}, nil)
	for _, m := range r.members {
		if m.probe != health.Unknown {
			tb.SetStatus(discovery.Key{Upstream: upstream, ID: m.id}, health.Status{State: m.probe, Since: time.Unix(1, 0)})
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// startBackends starts n real gRPC servers (b0, b1, ...) with the health service, and returns
// their ports by name.
func startBackends(t *testing.T, n int) map[string]int {
	ports := map[string]int{}
	for i := range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, grpchealth.NewServer())
		go srv.Serve(lis)
		t.Cleanup(srv.Stop)
		ports["b"+strconv.Itoa(i)] = lis.Addr().(*net.TCPAddr).Port
	}
	return ports
}

func byPort(backends map[string]int) map[int]string {
	m := map[int]string{}
	for id, p := range backends {
		m[p] = id
	}
	return m
}

// groups sorts each group's IDs and orders groups by priority.
func groups(prio map[int][]string) [][]string {
	keys := make([]int, 0, len(prio))
	for k := range prio {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out [][]string
	for _, k := range keys {
		g := slices.Clone(prio[k])
		slices.Sort(g)
		out = append(out, g)
	}
	return out
}

func equalGroups(a, b [][]string) bool {
	return slices.EqualFunc(a, b, func(x, y []string) bool { return slices.Equal(x, y) })
}

// dnsColumn runs vigil's DNS server on tb and asks it with dig: SRV records carry each
// instance's port and priority.
func dnsColumn(t *testing.T, tb *table.Table, dig string, backends map[string]int) column {
	cfg := dns.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	s, err := dns.New(cfg, tb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	run := testutil.Run(t, s, 10*time.Second)
	select {
	case <-s.Ready():
	case <-run.Done():
		t.Fatalf("dns: %v", run.Err())
	case <-time.After(10 * time.Second):
		t.Fatal("dns server not ready")
	}
	host, port, _ := net.SplitHostPort(s.Addr())
	ids := byPort(backends)
	return column{name: "DNS (dig SRV)", observe: func() ([][]string, error) {
		out, err := exec.Command(dig, "@"+host, "-p", port, "+short", "+tries=1", "+time=2",
			upstream+".service.consul.", "SRV").Output()
		if err != nil {
			return nil, fmt.Errorf("dig: %w", err)
		}
		prio := map[int][]string{}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line == "" { // no answer
				continue
			}
			f := strings.Fields(line) // priority weight port target
			if len(f) != 4 {
				return nil, fmt.Errorf("dig: unexpected line %q", line)
			}
			p, _ := strconv.Atoi(f[0])
			pt, _ := strconv.Atoi(f[2])
			prio[p] = append(prio[p], ids[pt])
		}
		return groups(prio), nil
	}}
}

// xdsColumn runs vigil's xDS server on tb and dials xds:///api through gRPC's own xDS client:
// the backends that answer a round of calls are where gRPC routes.
func xdsColumn(t *testing.T, tb *table.Table, backends map[string]int) column {
	cfg := xds.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.VersionFile = t.TempDir() + "/xds-version"
	s, err := xds.New(cfg, tb, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	run := testutil.Run(t, s, 10*time.Second)
	testutil.Eventually(t, 10*time.Second, time.Millisecond, func() bool {
		select {
		case <-run.Done():
			t.Fatalf("xds: %v", run.Err())
		default:
		}
		return s.Addr() != nil
	}, "xds server listening")
	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "matrix-test", "locality": {"zone": "a"}}
	}`, s.Addr().String())
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///"+upstream, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	hc := healthpb.NewHealthClient(cc)
	ids := byPort(backends)
	return column{name: "xDS (gRPC xDS client)", routes: true, observe: func() ([][]string, error) {
		seen := map[string]bool{}
		for i := range 4*len(backends) + 4 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var p peer.Peer
			// Not wait-for-ready: with no endpoint served, the channel is in transient failure
			// and the call fails at once, Unavailable: gRPC routes nowhere.
			_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
			cancel()
			if status.Code(err) == codes.Unavailable && i == 0 {
				return nil, nil
			}
			if err != nil {
				return nil, fmt.Errorf("grpc call: %w", err)
			}
			seen[ids[p.Addr.(*net.TCPAddr).Port]] = true
		}
		var g []string
		for id := range seen {
			g = append(g, id)
		}
		return groups(map[int][]string{0: g}), nil
	}}
}

// adminColumn runs vigil's admin server on tb and reads GET /v1/upstreams.
func adminColumn(t *testing.T, tb *table.Table, backends map[string]int) column {
	s := admin.New(admin.Config{Listen: "127.0.0.1:0"}, tb, nil, nil)
	addrc := make(chan net.Addr, 1)
	s.OnListen = func(a net.Addr) { addrc <- a }
	run := testutil.Run(t, s, 10*time.Second)
	var base string
	select {
	case a := <-addrc:
		base = "http://" + a.String()
	case <-run.Done():
		t.Fatalf("admin: %v", run.Err())
	case <-time.After(10 * time.Second):
		t.Fatal("admin did not start")
	}
	ids := byPort(backends)
	return column{name: "admin (/v1/upstreams)", observe: func() ([][]string, error) {
		resp, err := http.Get(base + "/v1/upstreams")
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var tab admin.Table
		if err := json.NewDecoder(resp.Body).Decode(&tab); err != nil {
			return nil, err
		}
		prio := map[int][]string{}
		for _, u := range tab.Upstreams {
			if u.Name != upstream {
				continue
			}
			for _, in := range u.Instances {
				if in.Served {
					prio[in.Priority] = append(prio[in.Priority], ids[in.Port])
				}
			}
		}
		return groups(prio), nil
	}}
}
