package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// TestShareWiring runs two vigils with share enabled on loopback: they find each other through
// share.join and both serve the shared instance as healthy.
func TestShareWiring(t *testing.T) {
	c := startCounting(t)
	yml := func(name, join string) string {
		return fmt.Sprintf(`
node: {name: %s}
admin: {listen: "127.0.0.1:0"}
xds: {listen: "127.0.0.1:0"}
dns: {listen: ""}
share: {enabled: true, bind: 127.0.0.1, port: 0, join: [%s], owners: 1, probe_interval: 200ms, gossip_interval: 50ms}
defaults:
  check: {kind: http, interval: %s, unhealthy_interval: %s, edge_interval: 50ms, timeout: 200ms}
upstreams:
  - name: web
    instances: [{id: w1, address: 127.0.0.1, port: %d}]
  - name: solo
    share: false
    instances: [{id: s1, address: 127.0.0.1, port: %d}]
`, name, join, interval, interval, c.port, c.port)
	}
	var a0, a1 *app
	base0 := startApp(t, yml("v0", ""), func(a *app) { a0 = a })
	select {
	case <-a0.share.Started():
	case <-time.After(settle):
		t.Fatal("gossip not started")
	}
	base1 := startApp(t, yml("v1", `"`+a0.share.Addr()+`"`), func(a *app) { a1 = a })
	for _, a := range []*app{a0, a1} {
		testutil.Eventually(t, settle, 20*time.Millisecond, func() bool {
			return testutil.Metric(t, a.reg, "vigil_share_members", nil) == 2
		}, "both vigils are members")
	}
	if got := a0.cfg.SharedUpstreams(); len(got) != 1 || got[0] != "web" {
		t.Errorf("shared upstreams %v, want [web]", got)
	}
	for _, base := range []string{base0, base1} {
		testutil.Eventually(t, settle, 20*time.Millisecond, func() bool {
			u := upstreams(t, base)
			return u["web"].Healthy == 1 && u["solo"].Healthy == 1
		}, "instances healthy on "+base)
	}
}
