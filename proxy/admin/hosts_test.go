package admin_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/proxy/admin"
)

// TestHostAndOrigin: a request naming another host (DNS rebinding: a page's own name resolved
// to 127.0.0.1) or coming from another origin is refused; loopback names, IP addresses, the
// listen host and admin.allowed_hosts are served.
func TestHostAndOrigin(t *testing.T) {
	h := admin.New(admin.Config{Listen: "127.0.0.1:9480", AllowedHosts: []string{"node-1.example"}},
		fixture(), prometheus.NewRegistry(), nil).Handler()
	for _, c := range []struct {
		host, origin string
		want         int
	}{
		{"127.0.0.1:9480", "", 200},
		{"localhost:9480", "", 200},
		{"LOCALHOST.:9480", "", 200},
		{"vigil.localhost:9480", "", 200},
		{"[::1]:9480", "", 200},
		{"10.1.2.3:9480", "", 200},
		{"node-1.example:9480", "", 200},
		{"node-1.example", "", 200},
		{"127.0.0.1:9480", "http://127.0.0.1:9480", 200},
		{"evil.example:9480", "", 403},
		{"127.0.0.1.evil.example:9480", "", 403},
		{"", "", 403},
		{"127.0.0.1:9480", "http://evil.example", 403},
		{"127.0.0.1:9480", "null", 403},
		{"localhost:9480", "http://127.0.0.1:9480", 403},
	} {
		for _, path := range []string{"/v1/upstreams", "/metrics", "/"} {
			r := httptest.NewRequest(http.MethodGet, path, nil)
			r.Host = c.host
			if c.origin != "" {
				r.Header.Set("Origin", c.origin)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != c.want {
				t.Errorf("GET %s Host %q Origin %q: %d, want %d", path, c.host, c.origin, w.Code, c.want)
			}
		}
	}
}

func TestAllowedHostsValidate(t *testing.T) {
	c := admin.Config{Listen: "127.0.0.1:9480", AllowedHosts: []string{"ok.example", "http://x", "x:1", ""}}
	err := c.Validate()
	if err == nil {
		t.Fatal("bad allowed_hosts accepted")
	}
	want := "allowed_hosts[1]: \"http://x\" must be a host name, without scheme or port\nallowed_hosts[2]: \"x:1\" must be a host name, without scheme or port\nallowed_hosts[3]: \"\" must be a host name, without scheme or port"
	if err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
}
