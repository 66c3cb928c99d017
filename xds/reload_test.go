package xds

import (
	"context"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// TestSetConfig: a reload that gives an upstream a listen port sends Envoy its listener
// (delta LDS, wildcard), and one that takes it away removes it.
func TestSetConfig(t *testing.T) {
	tb := threeUpstreams()
	s, addr, _ := runServer(t, tb, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dial(t, addr)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ListenerType, ResourceNamesSubscribe: []string{"*"}})
	if r := recv(t, st.Recv); len(r.Resources) != 0 {
		t.Fatalf("listeners before any listen_port: %d", len(r.Resources))
	} else {
		st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResponseNonce: r.Nonce})
	}

	cfg := DefaultConfig()
	cfg.Listen = ""
	cfg.Upstreams = map[string]UpstreamConfig{"b": {ListenPort: 15002}}
	if err := s.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	r := recv(t, st.Recv)
	if len(r.Resources) != 1 || r.Resources[0].Name != "outbound/b" {
		t.Fatalf("after the reload: %v", r.Resources)
	}
	var l listenerv3.Listener
	if err := r.Resources[0].Resource.UnmarshalTo(&l); err != nil || l.GetAddress().GetSocketAddress().GetPortValue() != 15002 {
		t.Fatalf("listener %v, %v", &l, err)
	}
	st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResponseNonce: r.Nonce})

	cfg.Upstreams = nil
	s.SetConfig(cfg)
	if r := recv(t, st.Recv); len(r.RemovedResources) != 1 || r.RemovedResources[0] != "outbound/b" {
		t.Fatalf("after the second reload: removed %v", r.RemovedResources)
	}
	bad := cfg
	bad.Coalesce = -1
	if s.SetConfig(bad) == nil {
		t.Fatal("SetConfig accepted an invalid config")
	}
}
