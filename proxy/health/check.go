package health

import (
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/vigil-sidecar/vigil/internal/tlsutil"
)

// check is a CheckConfig compiled once for every instance of an upstream.
type check struct {
	cfg    CheckConfig
	th     thresholds
	ranges [][2]int
	want   string        // the expected statuses, for reasons
	tls    *tls.Config   // base client config of https, tls and grpc-with-tls probes
	method *http.Request // tells http.ReadResponse the request method
	err    error         // a broken check: every probe fails with it
}

func compile(cfg CheckConfig) *check {
	c := &check{cfg: cfg, th: thresholdsOf(&cfg)}
	if err := cfg.Validate(); err != nil {
		c.err = fmt.Errorf("invalid check: %w", err)
		return c
	}
	switch cfg.Kind {
	case KindHTTP, KindHTTPS:
		for _, s := range cfg.HTTP.ExpectedStatuses {
			lo, hi, _ := ParseStatusRange(s)
			c.ranges = append(c.ranges, [2]int{lo, hi})
		}
		c.want = strings.Join(cfg.HTTP.ExpectedStatuses, ",")
		c.method = &http.Request{Method: cfg.HTTP.Method}
	}
	if cfg.Kind == KindHTTPS || cfg.Kind == KindTLS || cfg.Kind == KindGRPC && cfg.GRPC.TLS {
		c.tls = &tls.Config{
			MinVersion:         tlsVersion,
			ServerName:         cfg.TLS.ServerName,
			InsecureSkipVerify: cfg.TLS.InsecureSkipVerify, //nolint:gosec // the user's explicit choice
		}
		if cfg.TLS.CAFile != "" {
			pool, err := tlsutil.LoadCAPool(cfg.TLS.CAFile)
			if err != nil {
				c.err = fmt.Errorf("tls.ca_file: %w", err)
				return c
			}
			c.tls.RootCAs = pool
		}
	}
	return c
}

// tlsFor returns the client TLS config for an instance at address.
func (c *check) tlsFor(address string) *tls.Config {
	if c.tls == nil || c.tls.ServerName != "" {
		return c.tls
	}
	t := c.tls.Clone()
	t.ServerName = address
	return t
}

// statusOK reports whether an HTTP status code is expected.
func (c *check) statusOK(code int) bool {
	for _, r := range c.ranges {
		if code >= r[0] && code <= r[1] {
			return true
		}
	}
	return false
}

// interval returns the delay before the next probe, with jitter.
func (c *check) interval(unhealthy bool) time.Duration {
	d := c.cfg.Interval
	if unhealthy {
		d = c.cfg.UnhealthyInterval
	}
	if j := c.cfg.Jitter; j > 0 {
		d += time.Duration(float64(d) * j * (2*rand.Float64() - 1))
	}
	return d
}

// window is how early a periodic probe may be dispatched to share a wake-up with others: a
// quarter of the jitter's half-width (the probe times are already spread that much at random),
// at most maxWindow, at least slack.
func (c *check) window() time.Duration {
	w := time.Duration(float64(min(c.cfg.Interval, c.cfg.UnhealthyInterval)) * c.cfg.Jitter / 4)
	return max(min(w, maxWindow), slack)
}

// errNoHealthService is the reason when a gRPC server does not implement grpc.health.v1.
var errNoHealthService = errors.New("grpc health: service not implemented by the server")
