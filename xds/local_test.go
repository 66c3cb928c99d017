package xds

import (
	"context"
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// The local service's reserved upstream (local:NAME) is in the table, for the registration and
// the admin API, but it is not a destination: no cluster, no endpoints, neither in Translate
// nor in what the server pushes.
func TestLocalServiceNotServed(t *testing.T) {
	local := table.LocalUpstream("web")
	tb := newTable("", table.DefaultPolicy(), map[string][]discovery.Instance{
		"api": addrInstances("127.0.0.1:1001"),
		local: addrInstances("127.0.0.1:8080"),
	}, nil)
	if u := tb.Snapshot().Lookup(local); u == nil || !u.Local || len(u.Served) != 1 {
		t.Fatalf("table: local upstream %+v, want it held, marked local and judged", u)
	}

	r := Translate(tb.Snapshot(), &Config{})
	var names []string
	for n := range r.Clusters {
		names = append(names, n)
	}
	for n := range r.Endpoints {
		names = append(names, n)
	}
	slices.Sort(names)
	if want := []string{"api", "api"}; !slices.Equal(names, want) {
		t.Errorf("Translate: clusters and endpoints %v, want %v", names, want)
	}

	_, addr, _ := runServer(t, tb, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dial(t, addr)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.EndpointType} {
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typ}); err != nil {
			t.Fatal(err)
		}
		resp := recv(t, st.Recv)
		var got []string
		for _, res := range resp.Resources {
			if typ == resourcev3.ClusterType {
				var c clusterv3.Cluster
				if err := res.UnmarshalTo(&c); err != nil {
					t.Fatal(err)
				}
				got = append(got, c.Name)
				continue
			}
			var cla endpointv3.ClusterLoadAssignment
			if err := res.UnmarshalTo(&cla); err != nil {
				t.Fatal(err)
			}
			got = append(got, cla.ClusterName)
		}
		if !slices.Equal(got, []string{"api"}) {
			t.Errorf("pushed %s: %v, want [api]", typ, got)
		}
	}
}
