package admin_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
)

// TestDashboardInChromium loads the dashboard in a real headless Chromium and reads the DOM it renders.
func TestDashboardInChromium(t *testing.T) {
	chromium := testutil.Need(t, "chromium")
	tb := fixture()
	tb.SetStatus(discovery.Key{Upstream: "api", ID: "a"}, health.Status{State: health.Healthy})
	tb.SetStatus(discovery.Key{Upstream: "api", ID: "b"}, health.Status{State: health.Unhealthy, Reason: "<b>connection refused</b>"})
	base := serve(t, tb, prometheus.NewRegistry())

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(), "--virtual-time-budget=5000", "--dump-dom", base+"/").Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	dom := string(out)
	for _, want := range []string{
		`id="upstream-api"`,
		`<tr class="healthy" data-id="a">`,
		`<tr class="unhealthy" data-id="b">`,
		`1/2 healthy, 2 served`, // fail open below the fixture's 60% panic threshold
		`>PANIC<`,
		`&lt;b&gt;connection refused&lt;/b&gt;`, // discovery data is text, never markup
		`table version`,
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered dashboard lacks %s", want)
		}
	}
	if !strings.Contains(dom, `<div id="error"></div>`) {
		t.Error("dashboard could not reach the admin API")
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}
}
