package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// grpcConn is the gRPC client of one instance, kept while its probes pass.
type grpcConn struct {
	p       *prober
	cc      *grpc.ClientConn
	since   int64 // scheduler time of its creation
	closing atomic.Bool
	dialErr atomic.Pointer[error] // of the last dial
}

// probeGRPC calls grpc.health.v1.Health/Check; the client is dropped after an error, so that the
// next probe starts afresh rather than wait out gRPC's reconnection backoff.
func (p *prober) probeGRPC(ctx context.Context, deadline time.Time, gc *grpcConn) (*grpcConn, error) {
	if gc == nil {
		var err error
		if gc, err = p.newGRPC(); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	svc := p.chk.cfg.GRPC.Service
	resp, err := healthpb.NewHealthClient(gc.cc).Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
	if err != nil {
		gc.close()
		return nil, gc.reason(err, svc, p.chk.cfg.Timeout)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		if svc != "" {
			return gc, fmt.Errorf("grpc health status %s for service %q", resp.GetStatus(), svc)
		}
		return gc, fmt.Errorf("grpc health status %s", resp.GetStatus())
	}
	return gc, nil
}

func (p *prober) newGRPC() (*grpcConn, error) {
	creds := insecure.NewCredentials()
	if p.chk.cfg.GRPC.TLS {
		p.mu.Lock()
		if p.tlsCfg == nil {
			p.tlsCfg = p.chk.tlsFor(p.address)
		}
		creds = credentials.NewTLS(p.tlsCfg)
		p.mu.Unlock()
	}
	gc := &grpcConn{p: p, since: p.c.sched.now()}
	cfg := &p.chk.cfg
	cc, err := grpc.NewClient("passthrough:///"+p.hostport,
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(gc.dial),
		grpc.WithUserAgent("vigil-health/1"),
		// A probe sends and receives a few bytes: small buffers, released while idle.
		grpc.WithReadBufferSize(4096),
		grpc.WithWriteBufferSize(4096),
		grpc.WithSharedWriteBuffer(true),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: cfg.EdgeInterval, Multiplier: 1.6, Jitter: 0.2, MaxDelay: cfg.Interval},
			MinConnectTimeout: cfg.Timeout,
		}))
	if err != nil {
		return nil, fmt.Errorf("grpc client: %w", err)
	}
	gc.cc = cc
	return gc, nil
}

func (gc *grpcConn) dial(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{KeepAlive: -1}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		err = shortErr(err, gc.p.chk.cfg.Timeout)
		gc.dialErr.Store(&err)
		return nil, err
	}
	gc.dialErr.Store(nil)
	return &grpcNetConn{Conn: conn, gc: gc}, nil
}

// reason turns an RPC error into a short reason.
func (gc *grpcConn) reason(err error, svc string, timeout time.Duration) error {
	st := status.Convert(err)
	switch st.Code() {
	case codes.Unimplemented:
		return errNoHealthService
	case codes.NotFound:
		return fmt.Errorf("grpc health: service %q unknown to the server", svc)
	case codes.DeadlineExceeded, codes.Canceled:
		if de := gc.dialErr.Load(); de != nil {
			return *de
		}
		return fmt.Errorf("grpc health: no response within %s", timeout)
	case codes.Unavailable:
		if de := gc.dialErr.Load(); de != nil {
			return *de
		}
	}
	return fmt.Errorf("grpc health: %s: %s", st.Code(), st.Message())
}

// close ends the client; it is safe on nil.
func (gc *grpcConn) close() {
	if gc == nil || gc.cc == nil || gc.closing.Swap(true) {
		return
	}
	_ = gc.cc.Close()
}

// grpcNetConn tells the prober when the instance ends the connection under gRPC.
type grpcNetConn struct {
	net.Conn
	gc   *grpcConn
	done atomic.Bool
}

func (c *grpcNetConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil && !c.gc.closing.Load() && !errors.Is(err, net.ErrClosed) && !c.done.Swap(true) {
		c.gc.p.grpcClosed(c.gc)
	}
	return n, err
}

func (c *grpcNetConn) Close() error {
	c.done.Store(true)
	return c.Conn.Close()
}
