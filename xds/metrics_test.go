package xds

import (
	"bytes"
	"context"
	"os/exec"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	ptestutil "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/testutil"
)

// TestMetricsPromtool serves a little traffic, then checks the exposition with promtool.
func TestMetricsPromtool(t *testing.T) {
	promtool := testutil.Need(t, "promtool")
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
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool: %v\n%s", err, out)
	}
}
