package health

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-sidecar/vigil/internal/field"
)

// Probe kinds.
const (
	KindTCP   = "tcp"   // a TCP connect
	KindHTTP  = "http"  // an HTTP request
	KindHTTPS = "https" // an HTTP request over TLS
	KindGRPC  = "grpc"  // grpc.health.v1.Health/Check
	KindTLS   = "tls"   // a TLS handshake
	KindNone  = "none"  // no probe: the discovery source's verdict alone
)

// CheckConfig says how to probe the instances of one upstream.
type CheckConfig struct {
	// Kind is tcp, http, https, grpc, tls or none (default tcp).
	Kind string `yaml:"kind" json:"kind"`
	// Interval between probes of a healthy instance (default 1s).
	Interval time.Duration `yaml:"interval" json:"interval"`
	// UnhealthyInterval between probes of an unhealthy instance (default 1s).
	UnhealthyInterval time.Duration `yaml:"unhealthy_interval" json:"unhealthy_interval"`
	// EdgeInterval is the delay before the next probe after a result that disagrees with the
	// instance's state, so that a change is confirmed quickly (default 100ms).
	EdgeInterval time.Duration `yaml:"edge_interval" json:"edge_interval"`
	// Timeout of one probe; must be less than interval (default 500ms).
	Timeout time.Duration `yaml:"timeout" json:"timeout"`
	// Jitter is the fraction of the interval added or removed at random (default 0.1, 0 to 0.5).
	Jitter float64 `yaml:"jitter" json:"jitter"`
	// HealthyThreshold is the consecutive passes that make an instance healthy (default 2).
	HealthyThreshold int `yaml:"healthy_threshold" json:"healthy_threshold"`
	// UnhealthyThreshold is the consecutive failures that make an instance unhealthy (default 2).
	UnhealthyThreshold int `yaml:"unhealthy_threshold" json:"unhealthy_threshold"`
	// Watch holds one idle connection to each instance, so that a crash is noticed when the
	// instance's end closes it rather than at the next probe (default true). See the README.
	Watch bool `yaml:"watch" json:"watch"`
	// HTTP configures http and https probes.
	HTTP HTTPCheck `yaml:"http" json:"http"`
	// GRPC configures grpc probes.
	GRPC GRPCCheck `yaml:"grpc" json:"grpc"`
	// TLS configures https, tls and (when enabled) grpc probes.
	TLS TLSCheck `yaml:"tls" json:"tls"`
	// Flap configures flap damping (off by default).
	Flap FlapConfig `yaml:"flap" json:"flap"`
}

// HTTPCheck configures an HTTP probe.
type HTTPCheck struct {
	// Method of the request (default GET).
	Method string `yaml:"method" json:"method"`
	// Path of the request, with any query (default /).
	Path string `yaml:"path" json:"path"`
	// Host header (default: the instance's address and port).
	Host string `yaml:"host" json:"host,omitempty"`
	// Headers added to the request.
	Headers map[string]string `yaml:"headers" json:"headers,omitempty"`
	// ExpectedStatuses are the passing status codes, each "200" or "200-299" (default ["200-399"]).
	ExpectedStatuses []string `yaml:"expected_statuses" json:"expected_statuses"`
	// BodyContains, if set, must appear in the first 64 KiB of the response body.
	BodyContains string `yaml:"body_contains" json:"body_contains,omitempty"`
}

// GRPCCheck configures a grpc.health.v1 probe.
type GRPCCheck struct {
	// Service is the name sent in the HealthCheckRequest (default "": the whole server).
	Service string `yaml:"service" json:"service,omitempty"`
	// TLS makes the probe use TLS with the tls settings (default false).
	TLS bool `yaml:"tls" json:"tls,omitempty"`
}

// TLSCheck configures the TLS side of https, tls and grpc probes.
type TLSCheck struct {
	// ServerName for SNI and verification (default: the instance's address).
	ServerName string `yaml:"server_name" json:"server_name,omitempty"`
	// InsecureSkipVerify skips certificate verification (default false).
	InsecureSkipVerify bool `yaml:"insecure_skip_verify" json:"insecure_skip_verify,omitempty"`
	// CAFile is a PEM bundle of roots to verify against (default: the system roots).
	CAFile string `yaml:"ca_file" json:"ca_file,omitempty"`
}

// FlapConfig holds an instance that changes state too often unhealthy until it settles.
type FlapConfig struct {
	// Threshold is the number of state changes within window that marks an instance as flapping (default 0: off).
	Threshold int `yaml:"threshold" json:"threshold"`
	// Window over which state changes are counted (default 60s).
	Window time.Duration `yaml:"window" json:"window"`
	// HoldDown is how long a flapping instance must stay stable before it is served again (default 30s).
	HoldDown time.Duration `yaml:"hold_down" json:"hold_down"`
}

// DefaultCheck returns the built-in check defaults.
func DefaultCheck() CheckConfig {
	return CheckConfig{
		Kind:               KindTCP,
		Interval:           time.Second,
		UnhealthyInterval:  time.Second,
		EdgeInterval:       100 * time.Millisecond,
		Timeout:            500 * time.Millisecond,
		Jitter:             0.1,
		HealthyThreshold:   2,
		UnhealthyThreshold: 2,
		Watch:              true,
		HTTP:               HTTPCheck{Method: http.MethodGet, Path: "/", ExpectedStatuses: []string{"200-399"}},
		Flap:               FlapConfig{Window: time.Minute, HoldDown: 30 * time.Second},
	}
}

// Validate checks c; errors name the field.
func (c *CheckConfig) Validate() error {
	var errs field.Errors
	switch c.Kind {
	case KindTCP, KindHTTP, KindHTTPS, KindGRPC, KindTLS, KindNone:
	default:
		errs.Addf("kind", "must be one of tcp, http, https, grpc, tls, none, got %q", c.Kind)
	}
	if c.Interval <= 0 {
		errs.Addf("interval", "must be > 0")
	}
	if c.UnhealthyInterval <= 0 {
		errs.Addf("unhealthy_interval", "must be > 0")
	}
	if c.EdgeInterval <= 0 {
		errs.Addf("edge_interval", "must be > 0")
	} else if c.Interval > 0 && c.EdgeInterval > c.Interval {
		errs.Addf("edge_interval", "must not be more than interval")
	}
	switch {
	case c.Timeout <= 0:
		errs.Addf("timeout", "must be > 0")
	case c.Interval > 0 && c.Timeout >= c.Interval:
		errs.Addf("timeout", "must be less than interval")
	case c.UnhealthyInterval > 0 && c.Timeout >= c.UnhealthyInterval:
		errs.Addf("timeout", "must be less than unhealthy_interval")
	}
	if !(c.Jitter >= 0 && c.Jitter <= 0.5) { // NaN too
		errs.Addf("jitter", "must be between 0 and 0.5, got %g", c.Jitter)
	}
	if c.HealthyThreshold < 1 {
		errs.Addf("healthy_threshold", "must be >= 1")
	}
	if c.UnhealthyThreshold < 1 {
		errs.Addf("unhealthy_threshold", "must be >= 1")
	}
	if c.Kind == KindHTTP || c.Kind == KindHTTPS {
		errs.Add("http", c.HTTP.Validate())
	}
	if c.TLS.CAFile != "" && c.TLS.InsecureSkipVerify {
		errs.Addf("tls.insecure_skip_verify", "cannot be set together with ca_file")
	}
	if c.Flap.Threshold < 0 {
		errs.Addf("flap.threshold", "must be >= 0")
	}
	if c.Flap.Threshold > 0 {
		if c.Flap.Window <= 0 {
			errs.Addf("flap.window", "must be > 0")
		}
		if c.Flap.HoldDown <= 0 {
			errs.Addf("flap.hold_down", "must be > 0")
		}
	}
	return errs.Err()
}

// Validate checks h.
func (h *HTTPCheck) Validate() error {
	var errs field.Errors
	switch h.Method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodOptions:
	default:
		errs.Addf("method", "must be one of GET, HEAD, POST, PUT, OPTIONS, got %q", h.Method)
	}
	if !strings.HasPrefix(h.Path, "/") {
		errs.Addf("path", "must start with /, got %q", h.Path)
	}
	if len(h.ExpectedStatuses) == 0 {
		errs.Addf("expected_statuses", "must not be empty")
	}
	for i, s := range h.ExpectedStatuses {
		if _, _, err := ParseStatusRange(s); err != nil {
			errs.Addf(fmt.Sprintf("expected_statuses[%d]", i), "%v", err)
		}
	}
	return errs.Err()
}

// ParseStatusRange parses "200" or "200-299".
func ParseStatusRange(s string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if lo, err = strconv.Atoi(strings.TrimSpace(a)); err != nil {
		return 0, 0, fmt.Errorf("%q is not a status code or a range like 200-299", s)
	}
	hi = lo
	if isRange {
		if hi, err = strconv.Atoi(strings.TrimSpace(b)); err != nil {
			return 0, 0, fmt.Errorf("%q is not a status code or a range like 200-299", s)
		}
	}
	if lo < 100 || hi > 599 || lo > hi {
		return 0, 0, fmt.Errorf("%q is not a range of status codes within 100-599", s)
	}
	return lo, hi, nil
}

// tlsVersion is the floor for every TLS probe.
const tlsVersion = tls.VersionTLS12
