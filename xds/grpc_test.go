package xds

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	healthcfg "github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// backend is a real gRPC server with the health service; callers learn which backend
// answered from the peer address.
type backend struct {
	addr string
	srv  *grpc.Server
}

func startBackend(t *testing.T) *backend {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return &backend{addr: lis.Addr().String(), srv: srv}
}

// xdsClient dials xds:///name through gRPC's own xDS client, bootstrapped to the server at addr.
func xdsClient(t *testing.T, addr, name string) *grpc.ClientConn {
	t.Helper()
	bootstrap := fmt.Sprintf(`{
		"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
		"node": {"id": "grpc-test-client", "locality": {"zone": "zone-a"}}
	}`, addr)
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///"+name, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// spread makes n calls and counts them by backend address; failed calls count under "error"
// (a call in flight when its backend is killed fails: that is not a routing decision).
func spread(t *testing.T, cc *grpc.ClientConn, n int) map[string]int {
	t.Helper()
	hc := healthpb.NewHealthClient(cc)
	got := map[string]int{}
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var p peer.Peer
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p), grpc.WaitForReady(true))
		cancel()
		if err != nil {
			t.Logf("call: %v", err)
			got["error"]++
			continue
		}
		got[p.Addr.String()]++
	}
	return got
}

// TestGRPCXDSClient drives gRPC-Go's own xDS client against the server, with real gRPC
// backends: calls spread over the healthy ones, leave an unhealthy one, and come back to it.
func TestGRPCXDSClient(t *testing.T) {
	bs := []*backend{startBackend(t), startBackend(t), startBackend(t)}
	tb := newTable("", table.DefaultPolicy(), map[string][]discovery.Instance{"api": addrInstances(bs[0].addr, bs[1].addr, bs[2].addr)}, nil)
	_, addr, _ := runServer(t, tb, nil)
	cc := xdsClient(t, addr, "api")

	// Every healthy backend gets calls.
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool {
		got := spread(t, cc, 30)
		return got[bs[0].addr] > 0 && got[bs[1].addr] > 0 && got[bs[2].addr] > 0
	}, "calls spread over all three backends")

	// The checker's verdict reaches the client: no call goes to the unhealthy backend any more
	// (the wait only bounds a hang; make bench-failover measures how fast).
	start := time.Now()
	setState(tb, "api", "i0", healthcfg.Unhealthy)
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool {
		return spread(t, cc, 10)[bs[0].addr] == 0
	}, "no call to the unhealthy backend")
	t.Logf("unhealthy backend left after %s", time.Since(start))
	if got := spread(t, cc, 60); got[bs[0].addr] != 0 || got[bs[1].addr] == 0 || got[bs[2].addr] == 0 {
		t.Fatalf("after the failure: %v", got)
	}

	// Revived, it receives calls again.
	setState(tb, "api", "i0", healthcfg.Healthy)
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool {
		return spread(t, cc, 10)[bs[0].addr] > 0
	}, "calls to the revived backend")
}

// TestGRPCZonePriorities: with zone preference, gRPC's xDS client sends every call to the
// local zone (priority 0), and to the other zone once the local one has no healthy instance.
func TestGRPCZonePriorities(t *testing.T) {
	bs := []*backend{startBackend(t), startBackend(t), startBackend(t)}
	ins := addrInstances(bs[0].addr, bs[1].addr, bs[2].addr)
	ins[0].Zone, ins[1].Zone, ins[2].Zone = "zone-a", "zone-a", "zone-b"
	pol := table.Policy{PanicMode: table.FailOpen, ZonePreference: true, ZoneMinHealthy: 50}
	tb := newTable("zone-a", pol, map[string][]discovery.Instance{"api": ins}, nil)
	_, addr, _ := runServer(t, tb, nil)
	cc := xdsClient(t, addr, "api")

	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool {
		got := spread(t, cc, 30)
		return got[bs[0].addr] > 0 && got[bs[1].addr] > 0
	}, "calls to both local backends")
	if got := spread(t, cc, 60); got[bs[2].addr] != 0 {
		t.Fatalf("calls to the other zone while the local one is healthy: %v", got)
	}

	setState(tb, "api", "i0", healthcfg.Unhealthy)
	setState(tb, "api", "i1", healthcfg.Unhealthy)
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() bool {
		got := spread(t, cc, 10)
		return got[bs[2].addr] == 10
	}, "every call to the other zone once the local zone is down")

	setState(tb, "api", "i1", healthcfg.Healthy)
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() bool {
		got := spread(t, cc, 10)
		return got[bs[1].addr] == 10
	}, "every call back to the local zone")
}
