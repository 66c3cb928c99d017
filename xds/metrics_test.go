package xds

import (
	"context"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	ptestutil "github.com/prometheus/client_golang/prometheus/testutil"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// TestMetricsPromtool serves a little traffic, then checks the exposition with promtool.
func TestMetricsPromtool(t *testing.T) {
	testutil.Need(t, "promtool")
	tb := threeUpstreams()
	s, addr, reg := runServer(t, tb, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dial(t, addr)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType})
	r := recv(t, st.Recv)
	st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType, ResponseNonce: r.Nonce,
		ErrorDetail: &statuspb.Status{Code: 3, Message: "test"}})
	waitMetric(t, func() float64 { return ptestutil.ToFloat64(s.m.nacks.WithLabelValues("endpoint")) }, 1)
	setState(tb, "a", "i0", health.Unhealthy)
	recv(t, st.Recv)
	if n, _ := ptestutil.GatherAndCount(reg); n < 8 {
		t.Errorf("only %d series", n)
	}
	testutil.CheckMetrics(t, testutil.Exposition(t, reg))
}
