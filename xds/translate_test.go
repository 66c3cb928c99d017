package xds

import (
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

type validator interface{ ValidateAll() error }

func validateAll(t *testing.T, r *Resources) {
	t.Helper()
	check := func(name string, v validator) {
		if err := v.ValidateAll(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	for n, v := range r.Clusters {
		check("cluster "+n, v)
	}
	for n, v := range r.Endpoints {
		check("endpoints "+n, v)
	}
	// ValidateAll does not look into an Any: validate typed configs too.
	var checkAny func(name string, a *anypb.Any)
	checkAny = func(name string, a *anypb.Any) {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Errorf("%s: %v", name, err)
			return
		}
		check(name+" "+a.GetTypeUrl(), m.(validator))
		if h, ok := m.(*hcmv3.HttpConnectionManager); ok {
			for _, f := range h.HttpFilters {
				checkAny(name+" "+f.Name, f.GetTypedConfig())
			}
		}
	}
	for n, v := range r.Listeners {
		check("listener "+n, v)
		for _, fc := range v.FilterChains {
			for _, f := range fc.Filters {
				checkAny("listener "+n, f.GetTypedConfig())
			}
		}
	}
	for n, v := range r.APIListeners {
		check("api listener "+n, v)
		checkAny("api listener "+n, v.GetApiListener().GetApiListener())
	}
	for n, v := range r.Routes {
		check("route "+n, v)
	}
}

// newTable returns a table with the given upstreams, every instance at the given state.
func newTable(zone string, pol table.Policy, ups map[string][]discovery.Instance, states map[string]health.State) *table.Table {
	tb := table.New(table.Config{Zone: zone, Default: pol})
	m := discovery.Membership{Upstreams: map[string]*discovery.Upstream{}, Ready: true}
	st := map[discovery.Key]health.Status{}
	for name, ins := range ups {
		m.Upstreams[name] = &discovery.Upstream{Name: name, Instances: ins}
		for _, in := range ins {
			s, ok := states[in.ID]
			if !ok {
				s = health.Healthy
			}
			st[discovery.Key{Upstream: name, ID: in.ID}] = health.Status{State: s, Since: time.Unix(1, 0)}
		}
	}
	tb.SetMembership(m, st)
	return tb
}

func inst(id, zone string, port, failover int) discovery.Instance {
	return discovery.Instance{ID: id, Address: "127.0.0.1", Port: port, Zone: zone, Failover: failover, Datacenter: []string{"dc1", "dc2"}[failover]}
}

func TestLoadAssignmentPriorities(t *testing.T) {
	ins := []discovery.Instance{inst("a1", "a", 1001, 0), inst("a2", "a", 1002, 0), inst("b1", "b", 1003, 0), inst("f1", "a", 1004, 1)}
	cases := []struct {
		name   string
		pol    table.Policy
		states map[string]health.State
		want   map[string]uint32 // instance port -> priority
	}{
		{"zone preference", table.Policy{PanicMode: table.FailOpen, ZonePreference: true, ZoneMinHealthy: 50}, nil,
			map[string]uint32{"a1": 0, "a2": 0, "b1": 1, "f1": 2}},
		{"no zone preference", table.Policy{PanicMode: table.FailOpen}, nil,
			map[string]uint32{"a1": 0, "a2": 0, "b1": 0, "f1": 1}},
		{"local zone short: spill over", table.Policy{PanicMode: table.FailOpen, ZonePreference: true, ZoneMinHealthy: 70},
			map[string]health.State{"a1": health.Unhealthy}, map[string]uint32{"a1": 0, "a2": 0, "b1": 0, "f1": 1}},
		{"local datacenter down: fallback first", table.Policy{PanicMode: table.FailOpen, ZonePreference: true, ZoneMinHealthy: 50},
			map[string]health.State{"a1": health.Unhealthy, "a2": health.Unhealthy, "b1": health.Unhealthy},
			map[string]uint32{"f1": 0, "a1": 1, "a2": 1, "b1": 2}},
	}
	ids := map[uint32]string{1001: "a1", 1002: "a2", 1003: "b1", 1004: "f1"}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tb := newTable("a", c.pol, map[string][]discovery.Instance{"api": ins}, c.states)
			cla := LoadAssignment(tb.Snapshot().Lookup("api"))
			if err := cla.ValidateAll(); err != nil {
				t.Fatal(err)
			}
			if cla.GetPolicy().GetOverprovisioningFactor().GetValue() != strictOverprovisioning {
				t.Errorf("overprovisioning %v", cla.GetPolicy())
			}
			got := map[string]uint32{}
			prev := uint32(0)
			for _, loc := range cla.Endpoints {
				if loc.Priority < prev || loc.Priority > prev+1 {
					t.Errorf("priorities not sorted and contiguous: %d after %d", loc.Priority, prev)
				}
				prev = loc.Priority
				if loc.GetLoadBalancingWeight().GetValue() == 0 {
					t.Errorf("locality %v has no load balancing weight", loc.Locality)
				}
				for _, e := range loc.LbEndpoints {
					if e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress() != "127.0.0.1" {
						t.Errorf("address %v", e.GetEndpoint().GetAddress())
					}
					id := ids[e.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue()]
					got[id] = loc.Priority
					if loc.Locality.Zone != map[string]string{"a1": "a", "a2": "a", "b1": "b", "f1": "a"}[id] {
						t.Errorf("%s in locality %v", id, loc.Locality)
					}
				}
			}
			for id, p := range c.want {
				if got[id] != p {
					t.Errorf("%s: priority %d, want %d (all: %v)", id, got[id], p, got)
				}
			}
		})
	}
}

func TestLoadAssignmentHealth(t *testing.T) {
	ins := []discovery.Instance{inst("h", "", 1, 0), inst("u", "", 2, 0), inst("d", "", 3, 0), inst("n", "", 4, 0), inst("c", "", 5, 0)}
	ins[2].Health = discovery.Maintenance
	ins[4].Health = discovery.Critical
	ins[0].Weight = 7
	tb := newTable("", table.DefaultPolicy(), map[string][]discovery.Instance{"api": ins},
		map[string]health.State{"u": health.Unhealthy, "n": health.Unknown})
	cla := LoadAssignment(tb.Snapshot().Lookup("api"))
	want := map[uint32]corev3.HealthStatus{1: corev3.HealthStatus_HEALTHY, 2: corev3.HealthStatus_UNHEALTHY,
		3: corev3.HealthStatus_DRAINING, 4: corev3.HealthStatus_UNHEALTHY, 5: corev3.HealthStatus_UNHEALTHY}
	n := 0
	for _, loc := range cla.Endpoints {
		for _, e := range loc.LbEndpoints {
			port := e.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue()
			n++
			if e.HealthStatus != want[port] {
				t.Errorf("port %d: %v, want %v", port, e.HealthStatus, want[port])
			}
			if w := e.GetLoadBalancingWeight().GetValue(); (port == 1 && w != 7) || (port != 1 && w != 1) {
				t.Errorf("port %d: weight %d", port, w)
			}
		}
	}
	if n != len(ins) {
		t.Errorf("%d endpoints, want %d", n, len(ins))
	}
}

func TestTranslateListeners(t *testing.T) {
	tb := newTable("", table.DefaultPolicy(), map[string][]discovery.Instance{
		"plain": {inst("1", "", 1, 0)}, "tcp": {inst("1", "", 2, 0)}, "web": {inst("1", "", 3, 0)},
	}, nil)
	cfg := DefaultConfig()
	cfg.Upstreams = map[string]UpstreamConfig{
		"tcp": {ListenPort: 15001, CircuitBreakers: &CircuitBreakers{MaxConnections: 10}, OutlierDetection: &OutlierDetection{}},
		"web": {ListenPort: 15002, Protocol: ProtocolHTTP, ConnectTimeout: 250 * time.Millisecond},
	}
	cfg.Inbound = Inbound{Name: "self", Listen: "0.0.0.0:15000", Service: "127.0.0.1:8080", Protocol: ProtocolHTTP}
	r := Translate(tb.Snapshot(), &cfg)
	validateAll(t, r)

	if len(r.Clusters) != 4 || len(r.Endpoints) != 3 || len(r.APIListeners) != 3 {
		t.Fatalf("clusters %d endpoints %d api listeners %d", len(r.Clusters), len(r.Endpoints), len(r.APIListeners))
	}
	if _, ok := r.Listeners["outbound/plain"]; ok {
		t.Error("listener for an upstream without listen_port")
	}
	filter := func(name string) string {
		l := r.Listeners[name]
		if l == nil {
			t.Fatalf("no listener %s", name)
		}
		return l.FilterChains[0].Filters[0].GetTypedConfig().GetTypeUrl()
	}
	var tp tcpproxyv3.TcpProxy
	if err := r.Listeners["outbound/tcp"].FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&tp); err != nil || tp.GetCluster() != "tcp" {
		t.Errorf("tcp listener: %v %v", err, tp.GetCluster())
	}
	if got := r.Listeners["outbound/tcp"].GetAddress().GetSocketAddress().GetPortValue(); got != 15001 {
		t.Errorf("tcp listener port %d", got)
	}
	var m hcmv3.HttpConnectionManager
	if err := r.Listeners["outbound/web"].FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
		t.Fatal(err)
	}
	if m.GetRds().GetRouteConfigName() != "outbound/web" || len(m.HttpFilters) != 1 || m.HttpFilters[0].Name != "envoy.filters.http.router" {
		t.Errorf("http listener: %v", &m)
	}
	if rc := r.Routes["outbound/web"]; rc == nil || rc.VirtualHosts[0].Routes[0].GetRoute().GetCluster() != "web" {
		t.Errorf("route: %v", rc)
	}
	if got := filter("inbound/self"); got != "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" {
		t.Errorf("inbound filter %s", got)
	}
	if c := r.Clusters["inbound/self"]; c.GetType().String() != "STATIC" || len(c.GetLoadAssignment().GetEndpoints()) != 1 {
		t.Errorf("inbound cluster %v", c)
	}
	if c := r.Clusters["tcp"]; c.GetCircuitBreakers().GetThresholds()[0].GetMaxConnections().GetValue() != 10 ||
		c.GetOutlierDetection().GetConsecutive_5Xx().GetValue() != 5 || c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil {
		t.Errorf("tcp cluster %v", c)
	}
	if got := r.Clusters["web"].GetConnectTimeout().AsDuration(); got != 250*time.Millisecond {
		t.Errorf("connect timeout %s", got)
	}
	var api hcmv3.HttpConnectionManager
	if err := r.APIListeners["web"].GetApiListener().GetApiListener().UnmarshalTo(&api); err != nil ||
		api.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0].GetRoute().GetCluster() != "web" {
		t.Errorf("api listener: %v %v", err, &api)
	}
}

// TestLoadAssignmentSkipsHostNames: Envoy's EDS takes IP addresses only; an instance known by a
// host name stays out of the endpoint set (it is served over DNS) rather than fail the push.
func TestLoadAssignmentSkipsHostNames(t *testing.T) {
	ins := []discovery.Instance{inst("ip", "", 1, 0), inst("name", "", 2, 0), inst("v6", "", 3, 0)}
	ins[1].Address = "db.internal.example"
	ins[2].Address = "::1"
	tb := newTable("", table.DefaultPolicy(), map[string][]discovery.Instance{"api": ins}, nil)
	cla := LoadAssignment(tb.Snapshot().Lookup("api"))
	var got []string
	for _, loc := range cla.Endpoints {
		for _, e := range loc.LbEndpoints {
			got = append(got, e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"127.0.0.1", "::1"}) {
		t.Errorf("endpoint addresses = %v, want the two IP addresses only", got)
	}
	if err := cla.ValidateAll(); err != nil {
		t.Error(err)
	}
}
