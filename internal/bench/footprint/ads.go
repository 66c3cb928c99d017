package footprint

import (
	"context"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// adsClient subscribes to every cluster and endpoint set over one ADS stream, as one Envoy
// would, and ACKs each response until ctx ends; it returns once the first endpoints came.
func adsClient(ctx context.Context, addr string) (func(), error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("footprint: ads: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := func() { cancel(); cc.Close() }
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		stop()
		return nil, fmt.Errorf("footprint: ads: %w", err)
	}
	node := &corev3.Node{Id: "footprint", Cluster: "footprint"}
	for _, t := range []string{resourcev3.ClusterType, resourcev3.EndpointType} {
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: t}); err != nil {
			stop()
			return nil, fmt.Errorf("footprint: ads: %w", err)
		}
	}
	got := make(chan struct{})
	go func() {
		first := true
		for {
			r, err := st.Recv()
			if err != nil {
				return
			}
			if first && r.TypeUrl == resourcev3.EndpointType {
				first = false
				close(got)
			}
			_ = st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: r.TypeUrl, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce})
		}
	}()
	select {
	case <-got:
		return stop, nil
	case <-ctx.Done():
		stop()
		return nil, ctx.Err()
	}
}
