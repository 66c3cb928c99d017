package xds

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// serverSettings reads the HTTP/2 SETTINGS the server sends on a new connection.
func serverSettings(t *testing.T, addr string) map[http2.SettingID]uint32 {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no SETTINGS from the server: %v", err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			out := map[http2.SettingID]uint32{}
			sf.ForeachSetting(func(s http2.Setting) error { out[s.ID] = s.Val; return nil })
			return out
		}
	}
}

// TestStreamsPerConnection: the server announces a bounded SETTINGS_MAX_CONCURRENT_STREAMS
// (it was 1<<20: one connection could open streams until memory ran out) and a bounded
// header list.
func TestStreamsPerConnection(t *testing.T) {
	_, addr, _ := runServer(t, threeUpstreams(), nil)
	got := serverSettings(t, addr)
	if v := got[http2.SettingMaxConcurrentStreams]; v != 100 {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d, want the default 100", v)
	}
	if v, ok := got[http2.SettingMaxHeaderListSize]; !ok || v > 64<<10 {
		t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE = %d (sent %v), want at most 64 KiB", v, ok)
	}
	_, addr, _ = runServer(t, threeUpstreams(), func(c *Config) { c.Limits.MaxStreamsPerConnection = 3 })
	if v := serverSettings(t, addr)[http2.SettingMaxConcurrentStreams]; v != 3 {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d, want the configured 3", v)
	}
}

// waitClosed waits (bounded) for the server to close c and reports whether it did.
func waitClosed(t *testing.T, c net.Conn, within time.Duration) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	buf := make([]byte, 512)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue // e.g. the server's SETTINGS
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return false
		}
		return true // EOF or reset
	}
}

// TestHandshakeTimeout: a TCP connection that never speaks HTTP/2 is closed after
// handshake_timeout (it was held until gRPC's own 120 s, and a silent peer could hold many).
func TestHandshakeTimeout(t *testing.T) {
	_, addr, _ := runServer(t, threeUpstreams(), func(c *Config) { c.Limits.HandshakeTimeout = 50 * time.Millisecond })
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !waitClosed(t, c, 10*time.Second) {
		t.Fatal("a silent connection is still open 10s after a 50ms handshake_timeout")
	}
}

// TestMaxConnections: connections beyond max_connections are closed at once and counted; a
// slot freed is used again.
func TestMaxConnections(t *testing.T) {
	s, addr, _ := runServer(t, threeUpstreams(), func(c *Config) { c.Limits.MaxConnections = 2 })
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if !waitClosed(t, extra, 10*time.Second) {
		t.Fatal("a third connection is held open with max_connections 2")
	}
	if n := promtest.ToFloat64(s.m.rejected.WithLabelValues("connection")); n != 1 {
		t.Errorf("vigil_xds_rejected_total{what=connection} = %v, want 1", n)
	}
	held[0].Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The freed slot serves a real client, once the server has seen the close (until then a
	// connection is still refused: the client waits for ready and dials again).
	ads, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(dial(t, addr)).StreamAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	defer ads.CloseSend()
	ads.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType})
	if r := recv(t, ads.Recv); len(r.Resources) != 3 {
		t.Errorf("%d clusters, want 3", len(r.Resources))
	}
}

// TestMaxStreams: streams beyond max_streams, over any number of connections, fail with
// RESOURCE_EXHAUSTED; a stream closed frees its slot.
func TestMaxStreams(t *testing.T) {
	_, addr, _ := runServer(t, threeUpstreams(), func(c *Config) { c.Limits.MaxStreams = 2 })
	open := func(ctx context.Context) (discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesClient, error) {
		ads, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(dial(t, addr)).StreamAggregatedResources(ctx)
		if err != nil {
			return nil, err
		}
		ads.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType})
		_, err = recvErr(ads.Recv)
		return ads, err
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	defer cancel1()
	for _, ctx := range []context.Context{ctx1, context.Background()} {
		if _, err := open(ctx); err != nil {
			t.Fatalf("stream within the limit: %v", err)
		}
	}
	if _, err := open(context.Background()); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third stream: %v, want RESOURCE_EXHAUSTED", err)
	}
	cancel1()
	// The server sees the cancellation asynchronously: retry (bounded) until the slot is free.
	deadline := time.After(10 * time.Second)
	for {
		_, err := open(context.Background())
		if err == nil {
			break
		}
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatal(err)
		}
		select {
		case <-deadline:
			t.Fatal("a closed stream's slot was not freed")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// recvErr is recv that returns the error instead of failing, still bounded.
func recvErr[T any](f func() (T, error)) (T, error) {
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() { v, err := f(); ch <- res{v, err} }()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(5 * time.Second):
		var zero T
		return zero, errors.New("no response within 5s")
	}
}
