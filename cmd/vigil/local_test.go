package main

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// TestLocalServiceDown kills and revives the local service (the `service:` section): the one
// checker probes it as local:web, so its state shows in /v1/upstreams (marked local) and in
// /metrics like any instance's, and the registration follows it: the real Consul agent's check
// turns critical, then passing again.
func TestLocalServiceDown(t *testing.T) {
	addr := startConsul(t)
	c := consulClient(t, addr)
	local := &backend{kind: "tcp", addr: "127.0.0.1:0"}
	local.start(t)
	t.Cleanup(func() { local.kill() })
	other := &backend{kind: "tcp", addr: "127.0.0.1:0"}
	other.start(t)
	t.Cleanup(func() { other.kill() })

	base := startApp(t, fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
xds: {listen: "127.0.0.1:0"}
dns: {listen: "127.0.0.1:0"}
consul: {enabled: true, address: %q, wait_time: 5s}
service:
  name: web
  address: 127.0.0.1
  port: %d
  ttl: 10s
  check: {kind: tcp, interval: 200ms, unhealthy_interval: 200ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 1}
upstreams:
  - name: api
    check: {kind: tcp, interval: 200ms, timeout: 100ms}
    instances: [{address: 127.0.0.1, port: %d}]
`, addr, local.port(), other.port()))

	checkID := "vigil:web-127.0.0.1-" + strconv.Itoa(local.port())
	consulStatus := func() string {
		checks, _, err := c.Health().Checks("web", nil)
		if err != nil {
			return err.Error()
		}
		for _, ch := range checks {
			if ch.CheckID == checkID {
				return ch.Status
			}
		}
		return "absent"
	}
	localState := func() (string, bool) {
		u, ok := upstreams(t, base)["local:web"]
		if !ok || len(u.Instances) != 1 {
			return "absent", false
		}
		return u.Instances[0].State, u.Local
	}
	metric := func(state string) string {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, `vigil_table_instances{state="`+state+`",upstream="local:web"} `) {
				return strings.TrimPrefix(line, `vigil_table_instances{state="`+state+`",upstream="local:web"} `)
			}
		}
		return "absent"
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		testutil.Eventually(t, 20*time.Second, 20*time.Millisecond, cond, what)
	}

	wait("local:web healthy, marked local", func() bool { s, l := localState(); return s == "healthy" && l })
	wait("the Consul check passing", func() bool { return consulStatus() == api.HealthPassing })
	if m := metric("healthy"); m != "1" {
		t.Errorf("vigil_table_instances healthy local:web = %s, want 1", m)
	}

	local.kill()
	wait("local:web unhealthy in /v1/upstreams", func() bool { s, _ := localState(); return s == "unhealthy" })
	wait("local:web unhealthy in /metrics", func() bool { return metric("unhealthy") == "1" && metric("healthy") == "0" })
	wait("the Consul check critical", func() bool { return consulStatus() == api.HealthCritical })
	if u := upstreams(t, base)["api"]; u.Served != 1 || u.Local {
		t.Errorf("api: served %d, local %v; want 1 and false (undisturbed)", u.Served, u.Local)
	}

	local.start(t)
	wait("local:web healthy again", func() bool { s, _ := localState(); return s == "healthy" })
	wait("the Consul check passing again", func() bool { return consulStatus() == api.HealthPassing })
}
