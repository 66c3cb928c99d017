package xds

import (
	"context"
	"errors"
	"net"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/vigil-sidecar/vigil/proxy/table"
)

// oneNode gives every client the same snapshot.
type oneNode struct{}

func (oneNode) ID(*corev3.Node) string { return "all" }

// runBaseline is what a naive go-control-plane user writes: on every table change, the
// whole snapshot is translated again, checked, and set in a SnapshotCache.
func runBaseline(ctx context.Context, tb *table.Table, lis net.Listener) error {
	sc := cachev3.NewSnapshotCache(true, oneNode{}, nil)
	cfg := DefaultConfig()
	version := 0
	build := func() error {
		version++
		r := Translate(tb.Snapshot(), &cfg)
		res := map[resourcev3.Type][]types.Resource{}
		for _, c := range r.Clusters {
			res[resourcev3.ClusterType] = append(res[resourcev3.ClusterType], c)
		}
		for _, e := range r.Endpoints {
			res[resourcev3.EndpointType] = append(res[resourcev3.EndpointType], e)
		}
		snap, err := cachev3.NewSnapshot(strconv.Itoa(version), res)
		if err != nil {
			return err
		}
		if err := snap.Consistent(); err != nil {
			return err
		}
		return sc.SetSnapshot(ctx, "all", snap)
	}
	if err := build(); err != nil {
		return err
	}
	gs := grpc.NewServer(grpc.MaxConcurrentStreams(1 << 20))
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(ctx, sc, nil))
	go func() {
		<-ctx.Done()
		gs.Stop()
	}()
	go func() {
		ch, cancel := tb.Subscribe()
		defer cancel()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				if err := build(); err != nil {
					panic(err)
				}
			}
		}
	}()
	if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}
