package xds

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// liveBackend is a gRPC backend that can be killed and revived on the same address,
// or told to report NOT_SERVING to health checks while it keeps answering calls.
type liveBackend struct {
	t      *testing.T
	addr   string
	srv    *grpc.Server
	health *grpchealth.Server
}

func (b *liveBackend) start() {
	lis, err := net.Listen("tcp", b.addr)
	if err != nil {
		b.t.Fatal(err)
	}
	b.addr = lis.Addr().String()
	b.srv, b.health = grpc.NewServer(), grpchealth.NewServer()
	healthpb.RegisterHealthServer(b.srv, b.health)
	go b.srv.Serve(lis)
}

func (b *liveBackend) stop() { b.srv.Stop() }

// TestEndToEndWithChecker runs vigil's real health Checker, the table and the xDS server
// against real gRPC backends and gRPC-Go's xDS client. A backend that fails its health
// checks (while still answering calls), or is killed, gets no calls within
// unhealthy_threshold × interval plus a margin; revived, it gets calls again.
func TestEndToEndWithChecker(t *testing.T) {
	bs := make([]*liveBackend, 3)
	for i := range bs {
		bs[i] = &liveBackend{t: t, addr: "127.0.0.1:0"}
		bs[i].start()
		t.Cleanup(func() { bs[i].stop() })
	}
	check := health.DefaultCheck()
	check.Kind = health.KindGRPC
	check.Interval, check.UnhealthyInterval, check.EdgeInterval, check.Timeout = 200*time.Millisecond, 200*time.Millisecond, 50*time.Millisecond, 100*time.Millisecond
	// settle bounds the waits: it catches a hang, not a speed (make bench-failover measures that).
	const settle = 10 * time.Second

	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	members := make(chan discovery.Membership, 1)
	members <- discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{
		"api": {Name: "api", Instances: addrInstances(bs[0].addr, bs[1].addr, bs[2].addr)},
	}}
	checker, err := health.NewChecker(health.Options{Default: check, Sink: tb, Members: members})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- checker.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() bool {
		u := tb.Snapshot().Lookup("api")
		return u != nil && u.Healthy == 3
	}, "every backend healthy")

	_, addr, _ := runServer(t, tb, nil)
	cc := xdsClient(t, addr, "api")
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool {
		got := spread(t, cc, 30)
		return got[bs[0].addr] > 0 && got[bs[1].addr] > 0 && got[bs[2].addr] > 0
	}, "calls spread over all three backends")

	leaves := func(b *liveBackend, how string) {
		t.Helper()
		start := time.Now()
		testutil.Eventually(t, settle, 5*time.Millisecond, func() bool { return spread(t, cc, 10)[b.addr] == 0 },
			"calls still go to the "+how+" backend")
		t.Logf("%s backend left after %s", how, time.Since(start))
		if got := spread(t, cc, 60); got[b.addr] != 0 || got["error"] != 0 {
			t.Fatalf("calls to the %s backend: %v", how, got)
		}
	}
	returns := func(b *liveBackend, how string) {
		t.Helper()
		start := time.Now()
		testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() bool { return spread(t, cc, 10)[b.addr] > 0 },
			"calls to the "+how+" backend again")
		t.Logf("%s backend back after %s", how, time.Since(start))
	}

	// Fails its health checks but still answers: only vigil can take it out.
	bs[0].health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	leaves(bs[0], "not serving")
	bs[0].health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	returns(bs[0], "serving again")

	// Killed, then revived on the same address.
	bs[1].stop()
	leaves(bs[1], "killed")
	testutil.Eventually(t, settle, 5*time.Millisecond, func() bool {
		return tb.Snapshot().Lookup("api").Instances[1].State == table.Unhealthy
	}, "the killed backend unhealthy in the table (and so UNHEALTHY over xDS)")
	bs[1].start()
	returns(bs[1], "revived")
}
