package xds

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/vigil-sidecar/vigil/internal/field"
)

// Upstream protocols.
const (
	ProtocolTCP  = "tcp"  // a TCP proxy listener
	ProtocolHTTP = "http" // an HTTP connection manager listener with a route configuration
)

// Config configures the xDS server.
type Config struct {
	// Listen is the address of the xDS gRPC server; empty disables it (default 127.0.0.1:18000).
	Listen string `yaml:"listen"`
	// Coalesce is how long the server waits after a table change for more before it pushes (default 10ms).
	Coalesce time.Duration `yaml:"coalesce"`
	// MaxDelay bounds how long a push waits while changes keep coming (default 100ms).
	MaxDelay time.Duration `yaml:"max_delay"`
	// TLS configures the server certificate and, for mTLS, the client CA (default: plaintext).
	TLS TLS `yaml:"tls"`
	// VersionFile keeps a counter that makes versions monotonic across restarts
	// (default: none, versions are based on the start time).
	VersionFile string `yaml:"version_file"`
	// ListenerAddress is the address Envoy binds the upstreams' local listeners to (default 127.0.0.1).
	ListenerAddress string `yaml:"listener_address"`
	// Inbound is the local service's inbound listener and cluster (default: none).
	Inbound Inbound `yaml:"inbound"`
	// Limits bound the connections and streams clients may open (see Limits for the defaults).
	Limits Limits `yaml:"limits"`
	// Upstreams are the per-upstream settings, by upstream name (filled from each upstream's xds block).
	Upstreams map[string]UpstreamConfig `yaml:"-"`
}

// TLS configures the xDS server's TLS.
type TLS struct {
	// CertFile and KeyFile are the server's PEM certificate chain and key (default: none, plaintext).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCAFile is a PEM bundle; when set, clients must present a certificate it signed (mTLS).
	ClientCAFile string `yaml:"client_ca_file"`
}

// Enabled reports whether the server uses TLS.
func (t *TLS) Enabled() bool { return t.CertFile != "" }

// Inbound is the local service as Envoy receives traffic for it.
type Inbound struct {
	// Name of the local service; empty for none (default: none).
	Name string `yaml:"name"`
	// Listen is where Envoy accepts inbound traffic, host:port.
	Listen string `yaml:"listen"`
	// Service is the local service's own address, host:port.
	Service string `yaml:"service"`
	// Protocol is tcp or http (default tcp).
	Protocol string `yaml:"protocol"`
	// ConnectTimeout to the local service (default 1s).
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
}

// UpstreamConfig is what Envoy needs to know of one upstream beyond its instances.
// Its zero value is valid and means the defaults.
type UpstreamConfig struct {
	// Protocol is tcp or http (default tcp).
	Protocol string `yaml:"protocol"`
	// ListenPort is the local port of the upstream's Envoy listener (default 0: no listener).
	ListenPort int `yaml:"listen_port"`
	// ConnectTimeout of a connection to an instance (default 1s).
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// CircuitBreakers limit the load on the upstream (default: none, Envoy's defaults).
	CircuitBreakers *CircuitBreakers `yaml:"circuit_breakers"`
	// OutlierDetection ejects instances that fail requests (default: none).
	OutlierDetection *OutlierDetection `yaml:"outlier_detection"`
}

// CircuitBreakers are Envoy's default-priority thresholds; 0 leaves one at Envoy's default.
type CircuitBreakers struct {
	MaxConnections     uint32 `yaml:"max_connections"`
	MaxPendingRequests uint32 `yaml:"max_pending_requests"`
	MaxRequests        uint32 `yaml:"max_requests"`
	MaxRetries         uint32 `yaml:"max_retries"`
}

// OutlierDetection configures passive ejection in the data plane.
type OutlierDetection struct {
	// Consecutive5xx errors that eject an instance (default 5).
	Consecutive5xx uint32 `yaml:"consecutive_5xx"`
	// Interval between ejection sweeps (default 10s).
	Interval time.Duration `yaml:"interval"`
	// BaseEjectionTime is the first ejection's duration (default 30s).
	BaseEjectionTime time.Duration `yaml:"base_ejection_time"`
	// MaxEjectionPercent of the instances that may be ejected at once (default 10).
	MaxEjectionPercent uint32 `yaml:"max_ejection_percent"`
}

// Defaults.
const (
	DefaultListen         = "127.0.0.1:18000"
	DefaultCoalesce       = 10 * time.Millisecond
	DefaultMaxDelay       = 100 * time.Millisecond
	DefaultConnectTimeout = time.Second
)

// DefaultConfig returns the built-in xDS configuration.
func DefaultConfig() Config {
	return Config{Listen: DefaultListen, Coalesce: DefaultCoalesce, MaxDelay: DefaultMaxDelay, ListenerAddress: "127.0.0.1", Limits: DefaultLimits()}
}

// Validate checks c; errors name the field.
func (c *Config) Validate() error {
	var errs field.Errors
	if c.Listen != "" {
		if err := field.HostPort(c.Listen, true); err != nil {
			errs.Addf("listen", "%v", err)
		}
	}
	if c.Coalesce < 0 {
		errs.Addf("coalesce", "must be >= 0")
	}
	if c.MaxDelay < c.Coalesce {
		errs.Addf("max_delay", "must be at least coalesce (%s)", c.Coalesce)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		errs.Addf("tls", "cert_file and key_file must be set together")
	}
	if c.TLS.ClientCAFile != "" && c.TLS.CertFile == "" {
		errs.Addf("tls.client_ca_file", "needs cert_file and key_file")
	}
	errs.Add("limits", c.Limits.Validate())
	if net.ParseIP(c.ListenerAddress) == nil {
		errs.Addf("listener_address", "%q is not an IP address", c.ListenerAddress)
	}
	if c.Inbound.Name != "" {
		if err := field.HostPort(c.Inbound.Listen, true); err != nil {
			errs.Addf("inbound.listen", "%v", err)
		} else if _, p, _ := net.SplitHostPort(c.Inbound.Listen); p == "0" {
			errs.Addf("inbound.listen", "%q: Envoy needs a fixed port", c.Inbound.Listen)
		}
		if err := field.HostPort(c.Inbound.Service, true); err != nil {
			errs.Addf("inbound.service", "%v", err)
		} else if _, p, _ := net.SplitHostPort(c.Inbound.Service); p == "0" {
			errs.Addf("inbound.service", "%q: needs the service's port", c.Inbound.Service)
		}
		if err := validProtocol(c.Inbound.Protocol); err != nil {
			errs.Addf("inbound.protocol", "%v", err)
		}
		if c.Inbound.ConnectTimeout < 0 {
			errs.Addf("inbound.connect_timeout", "must be >= 0")
		}
	}
	for name, u := range c.Upstreams {
		errs.Add("upstreams."+name, u.Validate())
	}
	return errs.Err()
}

// Validate checks u; errors name the field.
func (u *UpstreamConfig) Validate() error {
	var errs field.Errors
	if err := validProtocol(u.Protocol); err != nil {
		errs.Addf("protocol", "%v", err)
	}
	if u.ListenPort < 0 || u.ListenPort > 65535 {
		errs.Addf("listen_port", "must be a port between 1 and 65535, or 0 for no listener, got %d", u.ListenPort)
	}
	if u.ConnectTimeout < 0 {
		errs.Addf("connect_timeout", "must be >= 0")
	}
	if o := u.OutlierDetection; o != nil {
		if o.Interval < 0 {
			errs.Addf("outlier_detection.interval", "must be >= 0")
		}
		if o.BaseEjectionTime < 0 {
			errs.Addf("outlier_detection.base_ejection_time", "must be >= 0")
		}
		if o.MaxEjectionPercent > 100 {
			errs.Addf("outlier_detection.max_ejection_percent", "must be a percentage, got %d", o.MaxEjectionPercent)
		}
	}
	return errs.Err()
}

func validProtocol(p string) error {
	if p != "" && p != ProtocolTCP && p != ProtocolHTTP {
		return fmt.Errorf("must be tcp or http, got %q", p)
	}
	return nil
}

func splitHostPort(addr string) (string, uint32) {
	host, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	return host, uint32(n)
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}
