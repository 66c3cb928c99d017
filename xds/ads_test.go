package xds

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-sidecar/vigil/discovery"
	vtestutil "github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

var node = &corev3.Node{Id: "raw-test", UserAgentName: "raw-ads-test"}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// recv waits a bounded time for the next message of a stream.
func recv[T any](t *testing.T, f func() (T, error)) T {
	t.Helper()
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() { v, err := f(); ch <- res{v, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("recv: %v", r.err)
		}
		return r.v
	case <-time.After(5 * time.Second):
		t.Fatal("no response within 5s")
	}
	panic("unreachable")
}

// threeUpstreams is a table with upstreams a, b, c of two healthy instances each.
func threeUpstreams() *table.Table {
	ups := map[string][]discovery.Instance{}
	for i, n := range []string{"a", "b", "c"} {
		ups[n] = addrInstances("127.0.0.1:"+string(rune('1'+i))+"001", "127.0.0.1:"+string(rune('1'+i))+"002")
	}
	return newTable("", table.DefaultPolicy(), ups, nil)
}

func claNames(t *testing.T, res interface{ GetTypeUrl() string }, anys []*discoveryv3.Resource) []string {
	t.Helper()
	var out []string
	for _, r := range anys {
		var cla endpointv3.ClusterLoadAssignment
		if err := r.GetResource().UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		out = append(out, cla.ClusterName)
	}
	return out
}

func TestADSStateOfTheWorld(t *testing.T) {
	tb := threeUpstreams()
	s, addr, reg := runServer(t, tb, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(dial(t, addr))
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Subscribe to every endpoint set.
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType}); err != nil {
		t.Fatal(err)
	}
	r := recv(t, st.Recv)
	if len(r.Resources) != 3 || !strings.HasPrefix(r.VersionInfo, itoa(s.Epoch())+".") {
		t.Fatalf("first response: %d resources, version %q", len(r.Resources), r.VersionInfo)
	}
	// ACK, then one instance changes: only its endpoint set comes.
	st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce})
	setState(tb, "b", "i0", health.Unhealthy)
	r2 := recv(t, st.Recv)
	if len(r2.Resources) != 1 || !versionLess(t, r.VersionInfo, r2.VersionInfo) {
		t.Fatalf("after a change: %d resources, version %q after %q", len(r2.Resources), r2.VersionInfo, r.VersionInfo)
	}
	var cla endpointv3.ClusterLoadAssignment
	r2.Resources[0].UnmarshalTo(&cla)
	if cla.ClusterName != "b" || cla.Endpoints[0].LbEndpoints[0].HealthStatus != corev3.HealthStatus_UNHEALTHY {
		t.Fatalf("changed set: %v", &cla)
	}
	// NACK it: counted, and the server keeps going.
	st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, VersionInfo: r.VersionInfo,
		ResponseNonce: r2.Nonce, ErrorDetail: &statuspb.Status{Code: 3, Message: "test: endpoint rejected"}})
	waitMetric(t, func() float64 { return testutil.ToFloat64(s.m.nacks.WithLabelValues("endpoint")) }, 1)
	setState(tb, "c", "i1", health.Unhealthy)
	r3 := recv(t, st.Recv)
	if len(r3.Resources) != 1 {
		t.Fatalf("after a NACK and a change: %d resources", len(r3.Resources))
	}
	st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, VersionInfo: r3.VersionInfo, ResponseNonce: r3.Nonce})
	cancel()

	// Reconnect with the last version: the full current state comes back.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	st2, err := ads.StreamAggregatedResources(ctx2)
	if err != nil {
		t.Fatal(err)
	}
	st2.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, VersionInfo: r3.VersionInfo})
	if r4 := recv(t, st2.Recv); len(r4.Resources) != 3 {
		t.Fatalf("after a reconnect: %d resources", len(r4.Resources))
	}
	// Clusters are state of the world: every one in each response.
	st2.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType})
	if r5 := recv(t, st2.Recv); len(r5.Resources) != 3 || r5.TypeUrl != resourcev3.ClusterType {
		t.Fatalf("clusters: %d resources of %s", len(r5.Resources), r5.TypeUrl)
	}
	if n, err := testutil.GatherAndCount(reg, "vigil_xds_streams", "vigil_xds_pushes_total", "vigil_xds_nacks_total"); err != nil || n == 0 {
		t.Fatalf("metrics: %d, %v", n, err)
	}

	// The separate CDS service works too.
	cds, err := clusterservice.NewClusterDiscoveryServiceClient(dial(t, addr)).StreamClusters(ctx2)
	if err != nil {
		t.Fatal(err)
	}
	cds.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType})
	if r6 := recv(t, cds.Recv); len(r6.Resources) != 3 {
		t.Fatalf("cds: %d resources", len(r6.Resources))
	}
}

func TestADSDelta(t *testing.T) {
	tb := threeUpstreams()
	s, addr, _ := runServer(t, tb, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(dial(t, addr))
	st, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"*"}})
	r := recv(t, st.Recv)
	if len(r.Resources) != 3 {
		t.Fatalf("first response: %d resources", len(r.Resources))
	}
	known := map[string]string{}
	for _, x := range r.Resources {
		known[x.Name] = x.Version
	}
	st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResponseNonce: r.Nonce})

	// One instance changes: one endpoint set is sent, nothing else.
	setState(tb, "a", "i1", health.Unhealthy)
	r2 := recv(t, st.Recv)
	if got := claNames(t, r2, r2.Resources); len(got) != 1 || got[0] != "a" || len(r2.RemovedResources) != 0 {
		t.Fatalf("after a change: %v, removed %v", got, r2.RemovedResources)
	}
	// NACK: counted, and the server keeps going.
	st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResponseNonce: r2.Nonce,
		ErrorDetail: &statuspb.Status{Code: 3, Message: "test: rejected"}})
	waitMetric(t, func() float64 { return testutil.ToFloat64(s.m.nacks.WithLabelValues("endpoint")) }, 1)
	setState(tb, "c", "i0", health.Unhealthy)
	r3 := recv(t, st.Recv)
	if got := claNames(t, r3, r3.Resources); len(got) != 1 || got[0] != "c" {
		t.Fatalf("after a NACK and a change: %v", got)
	}
	for _, x := range append(r2.Resources, r3.Resources...) {
		known[x.Name] = x.Version
	}
	st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResponseNonce: r3.Nonce})

	// An upstream goes away: its removal is sent.
	m := discovery.Membership{Upstreams: map[string]*discovery.Upstream{}, Ready: true}
	snap := tb.Snapshot()
	for _, n := range []string{"a", "c"} {
		m.Upstreams[n] = &discovery.Upstream{Name: n, Instances: instancesOf(snap.Upstreams[n])}
	}
	tb.SetMembership(m, statusesOf(snap, "a", "c"))
	r4 := recv(t, st.Recv)
	if len(r4.Resources) != 0 || len(r4.RemovedResources) != 1 || r4.RemovedResources[0] != "b" {
		t.Fatalf("after a removal: %d resources, removed %v", len(r4.Resources), r4.RemovedResources)
	}
	delete(known, "b")
	cancel()

	// Reconnect with the versions it knows: nothing is re-sent until something changes.
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	st2, err := ads.DeltaAggregatedResources(ctx2)
	if err != nil {
		t.Fatal(err)
	}
	st2.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType,
		ResourceNamesSubscribe: []string{"*"}, InitialResourceVersions: known})
	r5 := recv(t, st2.Recv)
	if len(r5.Resources) != 0 {
		t.Fatalf("after a reconnect with current versions: %v re-sent", claNames(t, r5, r5.Resources))
	}
	st2.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResponseNonce: r5.Nonce})
	setState(tb, "a", "i1", health.Healthy)
	r6 := recv(t, st2.Recv)
	if got := claNames(t, r6, r6.Resources); len(got) != 1 || got[0] != "a" {
		t.Fatalf("after a reconnect and a change: %v", got)
	}
}

func instancesOf(u *table.Upstream) []discovery.Instance {
	out := make([]discovery.Instance, len(u.Instances))
	for i, in := range u.Instances {
		out[i] = in.Instance
	}
	return out
}

func statusesOf(s *table.Snapshot, names ...string) map[discovery.Key]health.Status {
	out := map[discovery.Key]health.Status{}
	for _, n := range names {
		for _, in := range s.Upstreams[n].Instances {
			st := health.Unhealthy
			if in.State == table.Healthy {
				st = health.Healthy
			}
			out[discovery.Key{Upstream: n, ID: in.ID}] = health.Status{State: st, Since: in.Since}
		}
	}
	return out
}

func waitMetric(t *testing.T, get func() float64, want float64) {
	t.Helper()
	vtestutil.Eventually(t, 5*time.Second, 2*time.Millisecond, func() bool { return get() >= want }, "metric reaches its value")
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// versionLess reports whether version a ("<epoch>.<n>") is before b.
func versionLess(t *testing.T, a, b string) bool {
	t.Helper()
	parse := func(v string) (uint64, uint64) {
		e, n, ok := strings.Cut(v, ".")
		x, err1 := strconv.ParseUint(e, 10, 64)
		y, err2 := strconv.ParseUint(n, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			t.Fatalf("version %q is not <epoch>.<n>", v)
		}
		return x, y
	}
	ae, an := parse(a)
	be, bn := parse(b)
	return ae < be || ae == be && an < bn
}
