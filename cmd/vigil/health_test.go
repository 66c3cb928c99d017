package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/internal/testutil"
)

func TestHealthCommand(t *testing.T) {
	b := &backend{kind: "tcp", addr: "127.0.0.1:0"}
	b.start(t)
	defer b.kill()
	base := startApp(t, fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
xds: {listen: "127.0.0.1:0"}
dns: {listen: "127.0.0.1:0"}
defaults: {check: {interval: 200ms, timeout: 100ms, unhealthy_interval: 200ms}}
upstreams:
  - name: db
    instances: [{address: 127.0.0.1, port: %d}]
`, b.port()))
	addr := strings.TrimPrefix(base, "http://")
	var out, errb bytes.Buffer
	if code := cli([]string{"health", "-addr", addr}, &out, &errb); code != 0 || strings.TrimSpace(out.String()) != "ok" {
		t.Fatalf("health: exit %d, stdout %q, stderr %q; want 0 and ok", code, out.String(), errb.String())
	}
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() bool {
		out.Reset()
		return cli([]string{"health", "-addr", addr, "-path", "/readyz"}, &out, &errb) == 0
	}, "readyz never answered 200 through vigil health")
	if strings.TrimSpace(out.String()) != "ready" {
		t.Errorf("health -path /readyz printed %q, want ready", out.String())
	}
}

func TestHealthCommandFails(t *testing.T) {
	notReady := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not ready: 2 instances awaiting their first probe", http.StatusServiceUnavailable)
	}))
	defer notReady.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-addr", strings.TrimPrefix(notReady.URL, "http://"), "-path", "/readyz"}, 1, "503 Service Unavailable: not ready: 2 instances"},
		{[]string{"-addr", closed}, 1, "connection refused"},
		{[]string{"-path", "readyz"}, 2, "usage"},
		{[]string{"extra"}, 2, "usage"},
	} {
		var out, errb bytes.Buffer
		code := cli(append([]string{"health"}, c.args...), &out, &errb)
		if code != c.code || !strings.Contains(errb.String(), c.want) || out.Len() != 0 {
			t.Errorf("health %q: exit %d, stdout %q, stderr %q; want exit %d and %q", c.args, code, out.String(), errb.String(), c.code, c.want)
		}
	}
}
