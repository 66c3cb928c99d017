package consul

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/consul/api"
)

// NewClient returns a Consul API client for c whose requests are counted in m (nil: not counted).
// Its transport keeps enough idle connections for one blocking query per watch.
func NewClient(c Config, m *Metrics) (*api.Client, error) {
	if m == nil {
		m = NewMetrics(nil)
	}
	tc := api.TLSConfig{
		Address:            c.TLS.ServerName,
		CAFile:             c.TLS.CAFile,
		CertFile:           c.TLS.CertFile,
		KeyFile:            c.TLS.KeyFile,
		InsecureSkipVerify: c.TLS.InsecureSkipVerify,
	}
	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
		// A backstop: each request has its own, shorter deadline (callTimeout, queryTimeout).
		ResponseHeaderTimeout: queryTimeout(10 * time.Minute),
	}
	if c.Scheme == "https" {
		tlsc, err := api.SetupTLSConfig(&tc)
		if err != nil {
			return nil, fmt.Errorf("consul: tls: %w", err)
		}
		tr.TLSClientConfig = tlsc
	}
	cl, err := api.NewClient(&api.Config{
		Address:    c.Address,
		Scheme:     c.Scheme,
		Token:      c.Token.Reveal(),
		TLSConfig:  tc,
		HttpClient: &http.Client{Transport: &transport{base: tr, m: m}},
	})
	if err != nil {
		return nil, fmt.Errorf("consul: client: %w", err)
	}
	return cl, nil
}
