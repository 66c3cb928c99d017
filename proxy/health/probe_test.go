package health_test

import (
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// instanceOf returns an instance at the address of a URL or host:port.
func instanceOf(t testing.TB, id, addr string) discovery.Instance {
	t.Helper()
	if u, err := url.Parse(addr); err == nil && u.Host != "" {
		addr = u.Host
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return discovery.Instance{ID: id, Address: host, Port: p, Weight: 1}
}

func httpServer(t *testing.T, h http.HandlerFunc) *httptest.Server {
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

// tcpServer accepts connections and holds them until the test ends.
func tcpServer(t *testing.T) string { return testutil.Listener(t) }

func grpcServer(t *testing.T) string {
	addr, _ := grpcServerStop(t)
	return addr
}

// grpcServerStop returns the address of a gRPC health server and a function that stops it.
func grpcServerStop(t *testing.T) (string, func()) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	hs := grpchealth.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("up", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("down", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(l) }()
	var once sync.Once
	stop := func() { once.Do(func() { s.Stop(); <-done }) }
	t.Cleanup(stop)
	return l.Addr().String(), stop
}

// caFile writes the certificate of a TLS test server as a PEM file.
func caFile(t *testing.T, s *httptest.Server) string {
	p := filepath.Join(t.TempDir(), "ca.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestProbeKinds(t *testing.T) {
	ok := httpServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "all ok") })
	unavailable := httpServer(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
	picky := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Host != "svc.example":
			w.WriteHeader(421)
		case r.Header.Get("X-Probe") != "yes":
			w.WriteHeader(400)
		case r.Method != http.MethodHead && r.URL.Path != "/ready":
			w.WriteHeader(404)
		default:
			io.WriteString(w, "ready")
		}
	})
	big := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Repeat("x", 70<<10)+"ok") // past the first 64 KiB
	})
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(tlsSrv.Close)
	ca := caFile(t, tlsSrv)
	tcp := tcpServer(t)
	grpcAddr := grpcServer(t)
	closed := fmt.Sprintf("127.0.0.1:%d", testutil.ClosedPort(t))

	with := func(kind string, f func(c *health.CheckConfig)) health.CheckConfig {
		c := fast(kind)
		if f != nil {
			f(&c)
		}
		return c
	}
	for _, tc := range []struct {
		name   string
		addr   string
		check  health.CheckConfig
		want   health.State
		reason string
	}{
		{"http 200", ok.URL, with("http", nil), health.Healthy, ""},
		{"http 503", unavailable.URL, with("http", nil), health.Unhealthy, "http status 503, want 200-399"},
		{"http 503 expected", unavailable.URL, with("http", func(c *health.CheckConfig) {
			c.HTTP.ExpectedStatuses = []string{"200", "500-503"}
		}), health.Healthy, ""},
		{"http 200 unexpected", ok.URL, with("http", func(c *health.CheckConfig) {
			c.HTTP.ExpectedStatuses = []string{"204"}
		}), health.Unhealthy, "http status 200, want 204"},
		{"http host header and headers", picky.URL, with("http", func(c *health.CheckConfig) {
			c.HTTP.Host, c.HTTP.Path, c.HTTP.Headers = "svc.example", "/ready", map[string]string{"X-Probe": "yes"}
		}), health.Healthy, ""},
		{"http wrong host", picky.URL, with("http", func(c *health.CheckConfig) {
			c.HTTP.Path, c.HTTP.Headers = "/ready", map[string]string{"X-Probe": "yes"}
		}), health.Unhealthy, "http status 421"},
		{"http missing header", picky.URL, with("http", func(c *health.CheckConfig) {
			c.HTTP.Host, c.HTTP.Path = "svc.example", "/ready"
		}), health.Unhealthy, "http status 400"},
		{"http head", picky.URL, with("http", func(c *health.CheckConfig) {
			c.HTTP.Method, c.HTTP.Host, c.HTTP.Path, c.HTTP.Headers = "HEAD", "svc.example", "/other", map[string]string{"X-Probe": "yes"}
		}), health.Healthy, ""},
		{"http body contains", ok.URL, with("http", func(c *health.CheckConfig) { c.HTTP.BodyContains = "ok" }), health.Healthy, ""},
		{"http body lacks", ok.URL, with("http", func(c *health.CheckConfig) { c.HTTP.BodyContains = "ready" }),
			health.Unhealthy, `body does not contain "ready"`},
		{"http body match past 64KiB", big.URL, with("http", func(c *health.CheckConfig) { c.HTTP.BodyContains = "ok" }),
			health.Unhealthy, `body does not contain "ok"`},
		{"http closed port", closed, with("http", nil), health.Unhealthy, "dial tcp " + closed + ": connect: connection refused"},
		{"https ca_file", tlsSrv.URL, with("https", func(c *health.CheckConfig) { c.TLS.CAFile = ca }), health.Healthy, ""},
		{"https insecure", tlsSrv.URL, with("https", func(c *health.CheckConfig) { c.TLS.InsecureSkipVerify = true }), health.Healthy, ""},
		{"https unknown authority", tlsSrv.URL, with("https", nil), health.Unhealthy, "tls handshake: tls: failed to verify certificate"},
		{"https wrong server name", tlsSrv.URL, with("https", func(c *health.CheckConfig) {
			c.TLS.CAFile, c.TLS.ServerName = ca, "other.example"
		}), health.Unhealthy, "tls handshake"},
		{"tcp", tcp, with("tcp", nil), health.Healthy, ""},
		{"tcp closed port", closed, with("tcp", nil), health.Unhealthy, "dial tcp " + closed + ": connect: connection refused"},
		{"tcp unresolvable", "nosuch.invalid:80", with("tcp", nil), health.Unhealthy, "lookup nosuch.invalid"},
		{"http unresolvable", "nosuch.invalid:80", with("http", nil), health.Unhealthy, "lookup nosuch.invalid"},
		{"tls", tlsSrv.URL, with("tls", func(c *health.CheckConfig) { c.TLS.CAFile = ca }), health.Healthy, ""},
		{"tls on plain tcp", tcp, with("tls", func(c *health.CheckConfig) { c.TLS.InsecureSkipVerify = true }), health.Unhealthy, "tls handshake"},
		{"tls closed port", closed, with("tls", nil), health.Unhealthy, "connection refused"},
		{"grpc serving", grpcAddr, with("grpc", nil), health.Healthy, ""},
		{"grpc service serving", grpcAddr, with("grpc", func(c *health.CheckConfig) { c.GRPC.Service = "up" }), health.Healthy, ""},
		{"grpc service not serving", grpcAddr, with("grpc", func(c *health.CheckConfig) { c.GRPC.Service = "down" }),
			health.Unhealthy, `grpc health status NOT_SERVING for service "down"`},
		{"grpc unknown service", grpcAddr, with("grpc", func(c *health.CheckConfig) { c.GRPC.Service = "nosuch" }),
			health.Unhealthy, `grpc health: service "nosuch" unknown to the server`},
		{"grpc on http server", ok.URL, with("grpc", nil), health.Unhealthy, "grpc health"},
		{"grpc closed port", closed, with("grpc", nil), health.Unhealthy, "dial tcp " + closed + ": connect: connection refused"},
		{"none", closed, with("none", nil), health.Healthy, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, health.Options{Default: tc.check})
			in := instanceOf(t, "a", tc.addr)
			h.set(map[string][]discovery.Instance{"up": {in}})
			st := h.wait(discovery.Key{Upstream: "up", ID: "a"}, tc.want, 5*time.Second)
			t.Logf("reason %q", st.Reason)
			if !strings.Contains(st.Reason, tc.reason) || tc.reason == "" && st.Reason != "" {
				t.Errorf("reason %q, want it to contain %q", st.Reason, tc.reason)
			}
			if st.Stats == nil {
				t.Error("nil Stats")
			}
		})
	}
}
