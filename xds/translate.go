package xds

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/vigil-sidecar/vigil/proxy/table"
)

// Resources are the Envoy v3 resources of one upstream, or of a whole snapshot.
// Each map is keyed by resource name.
type Resources struct {
	Clusters  map[string]*clusterv3.Cluster
	Endpoints map[string]*endpointv3.ClusterLoadAssignment
	// Listeners are socket listeners, for Envoy.
	Listeners map[string]*listenerv3.Listener
	// APIListeners are listeners named after each upstream, for proxyless gRPC clients (xds:///NAME).
	APIListeners map[string]*listenerv3.Listener
	Routes       map[string]*routev3.RouteConfiguration
}

func newResources() *Resources {
	return &Resources{
		Clusters:     map[string]*clusterv3.Cluster{},
		Endpoints:    map[string]*endpointv3.ClusterLoadAssignment{},
		Listeners:    map[string]*listenerv3.Listener{},
		APIListeners: map[string]*listenerv3.Listener{},
		Routes:       map[string]*routev3.RouteConfiguration{},
	}
}

// Names of the resources derived from an upstream or the inbound service.
func outboundName(upstream string) string { return "outbound/" + upstream }
func inboundName(service string) string   { return "inbound/" + service }

// Translate turns a table snapshot into Envoy resources: a pure function of its arguments.
// The local service's reserved upstream (table.LocalPrefix) is not a destination: skipped.
func Translate(s *table.Snapshot, cfg *Config) *Resources {
	r := newResources()
	for _, name := range s.Names {
		if u := s.Upstreams[name]; u != nil && !u.Local {
			TranslateUpstream(u, cfg).into(r)
		}
	}
	if cfg.Inbound.Name != "" {
		translateInbound(&cfg.Inbound).into(r)
	}
	return r
}

func (x *Resources) into(r *Resources) {
	mapsCopy(r.Clusters, x.Clusters)
	mapsCopy(r.Endpoints, x.Endpoints)
	mapsCopy(r.Listeners, x.Listeners)
	mapsCopy(r.APIListeners, x.APIListeners)
	mapsCopy(r.Routes, x.Routes)
}

func mapsCopy[M ~map[string]V, V any](dst, src M) {
	for k, v := range src {
		dst[k] = v
	}
}

// TranslateUpstream returns the resources of one upstream: its cluster, its endpoints,
// its API listener, and its socket listener (and route) when a listen port is configured.
func TranslateUpstream(u *table.Upstream, cfg *Config) *Resources {
	uc := cfg.Upstreams[u.Name]
	r := newResources()
	r.Clusters[u.Name] = Cluster(u.Name, &uc)
	r.Endpoints[u.Name] = LoadAssignment(u)
	r.APIListeners[u.Name] = apiListener(u.Name)
	if uc.ListenPort > 0 {
		name := outboundName(u.Name)
		addr := orDefault(cfg.ListenerAddress, "127.0.0.1")
		if uc.Protocol == ProtocolHTTP {
			r.Routes[name] = routeConfig(name, u.Name)
			r.Listeners[name] = httpListener(name, addr, uint32(uc.ListenPort), name)
		} else {
			r.Listeners[name] = tcpListener(name, addr, uint32(uc.ListenPort), u.Name)
		}
	}
	return r
}

// Cluster returns the EDS cluster of an upstream, its endpoints delivered over ADS.
func Cluster(name string, uc *UpstreamConfig) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig: &corev3.ConfigSource{
				ResourceApiVersion:    corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			},
		},
		ConnectTimeout: durationpb.New(orDefault(uc.ConnectTimeout, DefaultConnectTimeout)),
		LbPolicy:       clusterv3.Cluster_ROUND_ROBIN,
		// vigil's table is the judge of panic and has applied it already (in fail_open, the
		// instances it serves in panic are sent HEALTHY): Envoy's own panic mode (default: below
		// 50% healthy, send to all) is off.
		CommonLbConfig: &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: 0}},
	}
	if cb := uc.CircuitBreakers; cb != nil {
		t := &clusterv3.CircuitBreakers_Thresholds{Priority: corev3.RoutingPriority_DEFAULT}
		t.MaxConnections = u32(cb.MaxConnections)
		t.MaxPendingRequests = u32(cb.MaxPendingRequests)
		t.MaxRequests = u32(cb.MaxRequests)
		t.MaxRetries = u32(cb.MaxRetries)
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{t}}
	}
	if o := uc.OutlierDetection; o != nil {
		c.OutlierDetection = &clusterv3.OutlierDetection{
			Consecutive_5Xx:    wrapperspb.UInt32(orDefault(o.Consecutive5xx, 5)),
			Interval:           durationpb.New(orDefault(o.Interval, 10e9)),
			BaseEjectionTime:   durationpb.New(orDefault(o.BaseEjectionTime, 30e9)),
			MaxEjectionPercent: wrapperspb.UInt32(orDefault(o.MaxEjectionPercent, 10)),
		}
	}
	return c
}

func u32(v uint32) *wrapperspb.UInt32Value {
	if v == 0 {
		return nil
	}
	return wrapperspb.UInt32(v)
}

// HealthStatus maps the table's verdict on an instance to Envoy's: HEALTHY when the table
// serves it (in panic with fail_open, failing instances too), DRAINING while it drains, and
// UNHEALTHY otherwise, not yet probed instances included (Envoy and gRPC route to UNKNOWN
// endpoints as if healthy).
func HealthStatus(in *table.Instance) corev3.HealthStatus {
	switch {
	case in.Served:
		return corev3.HealthStatus_HEALTHY
	case in.State == table.Draining:
		return corev3.HealthStatus_DRAINING
	default:
		return corev3.HealthStatus_UNHEALTHY
	}
}

// strictOverprovisioning is an overprovisioning factor (in percent) so large that a priority
// keeps all the traffic while it has a healthy endpoint.
const strictOverprovisioning = 1_000_000

type localityKey struct {
	priority int
	region   string
	zone     string
}

// LoadAssignment returns the endpoints of an upstream: every instance with the table's verdict,
// weight and locality (region: datacenter, zone: zone), grouped by locality and the
// table's priority (same zone first, then other zones, then fallback datacenters).
func LoadAssignment(u *table.Upstream) *endpointv3.ClusterLoadAssignment {
	groups := map[localityKey]*endpointv3.LocalityLbEndpoints{}
	for i := range u.Instances {
		in := &u.Instances[i]
		if _, err := netip.ParseAddr(in.Address); err != nil {
			// EDS endpoints must be IP addresses: Envoy NACKs a host name, and the NACK would
			// also hold back every other endpoint set in the same response. Such instances are
			// served over DNS only.
			continue
		}
		k := localityKey{in.Priority, in.Datacenter, in.Zone}
		g := groups[k]
		if g == nil {
			g = &endpointv3.LocalityLbEndpoints{
				Locality: &corev3.Locality{Region: in.Datacenter, Zone: in.Zone},
				Priority: uint32(in.Priority),
			}
			groups[k] = g
		}
		w := uint32(max(in.Weight, 1))
		g.LbEndpoints = append(g.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(in.Address, uint32(in.Port)),
			}},
			HealthStatus:        HealthStatus(in),
			LoadBalancingWeight: wrapperspb.UInt32(w),
		})
		// gRPC ignores a locality without a weight: weigh each by its instances' weights.
		g.LoadBalancingWeight = wrapperspb.UInt32(g.GetLoadBalancingWeight().GetValue() + w)
	}
	keys := make([]localityKey, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b localityKey) int {
		return cmp.Or(cmp.Compare(a.priority, b.priority), cmp.Compare(a.region, b.region), cmp.Compare(a.zone, b.zone))
	})
	cla := &endpointv3.ClusterLoadAssignment{
		ClusterName: u.Name,
		// vigil's table decides when traffic leaves a priority (zone spill-over, datacenter
		// failover): Envoy moves to the next priority only when one has no healthy endpoint,
		// instead of when it is below 1/1.4 healthy (its default). gRPC does so already.
		Policy: &endpointv3.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(strictOverprovisioning)},
	}
	for _, k := range keys {
		cla.Endpoints = append(cla.Endpoints, groups[k])
	}
	return cla
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("xds: marshal %T: %v", m, err)) // only for types linked into the binary
	}
	return a
}

func tcpListener(name, addr string, port uint32, cluster string) *listenerv3.Listener {
	tp := &tcpproxyv3.TcpProxy{
		StatPrefix:       name,
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
	}
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(addr, port),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       "envoy.filters.network.tcp_proxy",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(tp)},
		}}}},
	}
}

func routerFilter() []*hcmv3.HttpFilter {
	return []*hcmv3.HttpFilter{{
		Name:       "envoy.filters.http.router",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
	}}
}

func httpListener(name, addr string, port uint32, route string) *listenerv3.Listener {
	m := &hcmv3.HttpConnectionManager{
		StatPrefix: name,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: route,
			ConfigSource: &corev3.ConfigSource{
				ResourceApiVersion:    corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			},
		}},
		HttpFilters: routerFilter(),
	}
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(addr, port),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(m)},
		}}}},
	}
}

func routeConfig(name, cluster string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    cluster,
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
				}},
			}},
		}},
	}
}

// apiListener is the listener a proxyless gRPC client asks for when it dials xds:///name.
// Its route configuration is inline: there is no socket, and no RDS round trip.
func apiListener(name string) *listenerv3.Listener {
	m := &hcmv3.HttpConnectionManager{
		StatPrefix:     name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: routeConfig(name, name)},
		HttpFilters:    routerFilter(),
	}
	return &listenerv3.Listener{
		Name:        name,
		ApiListener: &listenerv3.ApiListener{ApiListener: mustAny(m)},
	}
}

// translateInbound returns the local service's inbound listener and its static cluster.
func translateInbound(in *Inbound) *Resources {
	r := newResources()
	name := inboundName(in.Name)
	host, port := splitHostPort(in.Service)
	r.Clusters[name] = &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(orDefault(in.ConnectTimeout, DefaultConnectTimeout)),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(host, port)}},
			}}}},
		},
	}
	lhost, lport := splitHostPort(in.Listen)
	if in.Protocol == ProtocolHTTP {
		r.Routes[name] = routeConfig(name, name)
		r.Listeners[name] = httpListener(name, lhost, lport, name)
	} else {
		r.Listeners[name] = tcpListener(name, lhost, lport, name)
	}
	return r
}
