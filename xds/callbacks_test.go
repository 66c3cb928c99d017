package xds

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
)

// TestNACKLogged: a NACK is logged with the client's error detail and node, and counted.
func TestNACKLogged(t *testing.T) {
	var buf bytes.Buffer
	cfg := DefaultConfig()
	cfg.Listen = ""
	s, err := New(cfg, threeUpstreams(), prometheus.NewRegistry(), slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	cb := s.callbacks()
	detail := "gRPC config for type.googleapis.com/envoy.config.cluster.v3.Cluster rejected: bad cluster"
	cb.OnStreamRequest(1, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "envoy-7"}, TypeUrl: resourcev3.ClusterType,
		VersionInfo: "5.3", ResponseNonce: "9", ErrorDetail: &statuspb.Status{Code: 13, Message: detail}})
	cb.OnStreamDeltaRequest(2, &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "envoy-8"}, TypeUrl: resourcev3.EndpointType,
		ResponseNonce: "4", ErrorDetail: &statuspb.Status{Code: 13, Message: "bad endpoints"}})
	cb.OnStreamRequest(1, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: "5.4", ResponseNonce: "10"}) // an ACK
	out := buf.String()
	for _, want := range []string{detail, "node=envoy-7", "accepted_version=5.3", "bad endpoints", "node=envoy-8"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "NACK"); n != 2 {
		t.Errorf("%d NACK lines:\n%s", n, out)
	}
	if c, e := testutil.ToFloat64(s.m.nacks.WithLabelValues("cluster")), testutil.ToFloat64(s.m.nacks.WithLabelValues("endpoint")); c != 1 || e != 1 {
		t.Errorf("nacks: cluster %g, endpoint %g", c, e)
	}
}
