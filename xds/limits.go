package xds

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/vigil-sidecar/vigil/internal/field"
)

// Limits bound what clients can hold of the xDS server (the `xds.limits` block).
type Limits struct {
	// MaxConnections is the most client connections at once; a connection beyond it is
	// closed as soon as it is accepted (default 1024).
	MaxConnections int `yaml:"max_connections"`
	// MaxStreams is the most streams at once over all connections; a stream beyond it
	// fails with RESOURCE_EXHAUSTED (default 4096).
	MaxStreams int `yaml:"max_streams"`
	// MaxStreamsPerConnection is the HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS of each
	// connection (default 100; Envoy needs one stream per connection over ADS).
	MaxStreamsPerConnection uint32 `yaml:"max_streams_per_connection"`
	// HandshakeTimeout bounds a new connection's TLS handshake and HTTP/2 preface: one that
	// has not spoken HTTP/2 by then is closed (default 10s).
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"`
	// MaxConnectionIdle closes a connection that has had no stream for this long (default 5m).
	MaxConnectionIdle time.Duration `yaml:"max_connection_idle"`
	// MaxRecvMessageSize is the largest request message in bytes (default 4194304, 4 MiB).
	MaxRecvMessageSize int `yaml:"max_recv_message_size"`
}

// DefaultLimits returns the built-in limits.
func DefaultLimits() Limits {
	return Limits{
		MaxConnections:          1024,
		MaxStreams:              4096,
		MaxStreamsPerConnection: 100,
		HandshakeTimeout:        10 * time.Second,
		MaxConnectionIdle:       5 * time.Minute,
		MaxRecvMessageSize:      4 << 20,
	}
}

// Fixed per-stream and per-connection bounds: with MaxStreams they bound the memory that
// clients can make the server hold.
const (
	streamWindow     = 64 << 10 // HTTP/2 flow-control window of one stream: unread request bytes
	connWindow       = 1 << 20  // and of one connection
	maxHeaderList    = 64 << 10 // request headers of one stream
	keepaliveMinTime = 5 * time.Second
)

// Validate checks l; errors name the field.
func (l *Limits) Validate() error {
	var errs field.Errors
	if l.MaxConnections < 1 {
		errs.Addf("max_connections", "must be >= 1, got %d", l.MaxConnections)
	}
	if l.MaxStreams < 1 {
		errs.Addf("max_streams", "must be >= 1, got %d", l.MaxStreams)
	}
	if l.MaxStreamsPerConnection < 1 {
		errs.Addf("max_streams_per_connection", "must be >= 1, got %d", l.MaxStreamsPerConnection)
	}
	if l.HandshakeTimeout <= 0 {
		errs.Addf("handshake_timeout", "must be > 0, got %s", l.HandshakeTimeout)
	}
	if l.MaxConnectionIdle <= 0 {
		errs.Addf("max_connection_idle", "must be > 0, got %s", l.MaxConnectionIdle)
	}
	if l.MaxRecvMessageSize < 64<<10 {
		errs.Addf("max_recv_message_size", "must be at least 65536 bytes, got %d", l.MaxRecvMessageSize)
	}
	return errs.Err()
}

// serverOptions are the gRPC server's options that enforce l.
func (s *Server) serverOptions(l Limits) []grpc.ServerOption {
	var open atomic.Int64
	limit := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if open.Add(1) > int64(l.MaxStreams) {
			open.Add(-1)
			s.m.rejected.WithLabelValues("stream").Inc()
			return status.Errorf(codes.ResourceExhausted, "xds: %d streams open already (xds.limits.max_streams)", l.MaxStreams)
		}
		defer open.Add(-1)
		return h(srv, ss)
	}
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(l.MaxStreamsPerConnection),
		grpc.ChainStreamInterceptor(limit),
		grpc.ConnectionTimeout(l.HandshakeTimeout),
		grpc.MaxRecvMsgSize(l.MaxRecvMessageSize),
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.MaxHeaderListSize(maxHeaderList),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: l.MaxConnectionIdle, Time: 30 * time.Second, Timeout: 5 * time.Second,
		}),
	}
}

// limitListener closes, as soon as they are accepted, the connections beyond max open ones.
type limitListener struct {
	net.Listener
	open     atomic.Int64
	max      int64
	rejected func()
}

func (s *Server) limitListener(l net.Listener, max int) net.Listener {
	return &limitListener{Listener: l, max: int64(max), rejected: s.m.rejected.WithLabelValues("connection").Inc}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			l.rejected()
			c.Close()
			continue
		}
		return &limitConn{Conn: c, l: l}, nil
	}
}

// limitConn gives its slot back once, when closed.
type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}
