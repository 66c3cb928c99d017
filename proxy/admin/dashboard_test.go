package admin_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// backend is a real loopback HTTP server that an instance stands for.
type backend struct {
	srv  *http.Server
	port int
	done chan struct{}
}

func startBackend(t *testing.T) *backend {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{srv: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})},
		port: l.Addr().(*net.TCPAddr).Port, done: make(chan struct{})}
	go func() {
		defer close(b.done)
		if err := b.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("backend: %v", err)
		}
	}()
	t.Cleanup(b.kill)
	return b
}

// kill closes the backend's listener and connections, as a crashed instance.
func (b *backend) kill() {
	b.srv.Close()
	<-b.done
}

// checkedTable runs the real health checker over real loopback backends into a table: the
// upstream "api" (three instances in two zones) and "web" (one instance of two is down: panic).
func checkedTable(t *testing.T) (*table.Table, map[string]*backend) {
	t.Helper()
	backends := map[string]*backend{}
	inst := func(id, zone string, b *backend) discovery.Instance {
		port := 1 // nothing listens there: refused
		if b != nil {
			backends[id], port = b, b.port
		}
		return discovery.Instance{ID: id, Address: "127.0.0.1", Port: port, Zone: zone, Datacenter: "dc1", Weight: 1}
	}
	mem := discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{
		"api": {Name: "api", Synced: time.Now().Add(-2 * time.Second), Instances: []discovery.Instance{
			inst("api-1", "zone-a", startBackend(t)),
			inst("api-2", "zone-a", startBackend(t)),
			inst("api-3", "zone-b", startBackend(t)),
		}},
		"web": {Name: "web", Instances: []discovery.Instance{
			inst("web-1", "zone-a", startBackend(t)),
			inst("web-2", "zone-b", nil),
		}},
	}}
	check := health.DefaultCheck()
	// Lenient timeouts: on a loaded machine a live backend must not time out (the watched
	// connection tells the kill at once anyway).
	check.Interval, check.UnhealthyInterval, check.Timeout = 400*time.Millisecond, 400*time.Millisecond, 350*time.Millisecond
	tb := table.New(table.Config{Default: table.Policy{PanicMode: table.FailOpen, PanicThreshold: 60, ZoneMinHealthy: 70}})
	members := make(chan discovery.Membership, 1)
	members <- mem
	checker, err := health.NewChecker(health.Options{Default: check, Sink: tb, Members: members})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, checker, 5*time.Second)
	return tb, backends
}

// TestDashboardInChromium opens the dashboard in a real headless Chromium, kills an instance's
// backend and sees its cell turn unhealthy on the same page (pushed by /v1/events, no reload),
// with the transition and its cause listed. VIGIL_SCREENSHOT=1 writes docs/dashboard.png.
func TestDashboardInChromium(t *testing.T) {
	chromium := testutil.Need(t, "chromium")
	tb, backends := checkedTable(t)
	base := serve(t, tb, prometheus.NewRegistry())

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1000, 800), chromedp.Flag("disable-quic", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	cctx, cancelTab := chromedp.NewContext(actx)
	defer func() {
		if err := chromedp.Cancel(cctx); err != nil {
			t.Logf("close chromium: %v", err)
		}
		cancelTab()
	}()
	// The first action starts the browser: no timeout of its own (that would stop the browser).
	if err := chromedp.Do(cctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	do := func(what string, within time.Duration, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		browse(t, cctx, what, within, chromedp.Steps(steps...))
	}
	do("every live instance healthy", 20*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`#upstream-api .cell.healthy[data-id="api-1"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#upstream-api .cell.healthy[data-id="api-2"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#upstream-api .cell.healthy[data-id="api-3"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#upstream-web .cell.healthy[data-id="web-1"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#upstream-web .cell.unhealthy[data-id="web-2"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#upstream-web .badge.panic`)),
		chromedp.WaitVisible(chromedp.CSS(`#live.on`)),
	)
	// The sparkline fills with samples of several probes.
	browse(t, cctx, "sparklines", 20*time.Second, chromedp.Poll[bool](
		`document.querySelectorAll('#upstream-api .cell[data-id="api-2"] svg.spark polyline').length == 1 &&
		 document.querySelector('#upstream-api .cell[data-id="api-2"] svg.spark polyline').getAttribute('points').split(' ').length >= 3`,
		chromedp.WithPollingInterval(50*time.Millisecond)))
	browse(t, cctx, "mark the page", 5*time.Second, chromedp.Evaluate[bool](`window.vigilMarker = true`))

	killed := time.Now()
	backends["api-2"].kill()
	do("killed instance turns unhealthy", 20*time.Second,
		chromedp.WaitVisible(chromedp.CSS(`#upstream-api .cell.unhealthy[data-id="api-2"]`)))
	t.Logf("cell turned unhealthy %s after the kill (information, not asserted)", time.Since(killed).Round(time.Millisecond))
	js := func(what, expr string) string {
		return browse(t, cctx, what, 10*time.Second, chromedp.Evaluate[string](expr))
	}
	marker := browse(t, cctx, "marker", 10*time.Second, chromedp.Evaluate[bool](`window.vigilMarker === true`))
	cells := js("cells", `[...document.querySelectorAll('#upstream-api .cell')].map(c => c.dataset.id + '=' + c.dataset.state).join(' ')`)
	transitions := js("transitions", `[...document.querySelectorAll('#transitions tbody tr')].map(r => r.textContent).join('\n')`)
	zones := js("badges", `[...document.querySelectorAll('#upstream-api .cell .badge')].map(b => b.textContent).join(',')`)
	stale := js("staleness", `(document.querySelector('#upstream-api .badge.stale') || {textContent: ''}).textContent`)
	errText := js("error", `document.getElementById('error').textContent`)
	if !marker {
		t.Error("the page was reloaded; want the change pushed into the same page")
	}
	if !strings.Contains(cells, "api-2=unhealthy") || strings.Count(cells, "=") != 3 {
		t.Errorf("cells = %q, want api-2 unhealthy among three", cells)
	}
	if !strings.Contains(transitions, "api/api-2healthyunhealthy") || !strings.Contains(transitions, "refused") {
		t.Errorf("transitions lack api-2 healthy → unhealthy with its cause:\n%s", transitions)
	}
	if !strings.Contains(zones, "zone zone-a") || !strings.Contains(zones, "zone zone-b") || !strings.Contains(zones, "dc dc1") ||
		!strings.Contains(zones, "not served") {
		t.Errorf("zone and datacenter badges = %q", zones)
	}
	if !strings.HasPrefix(stale, "Consul view ") {
		t.Errorf("staleness badge = %q", stale)
	}
	if errText != "" {
		t.Errorf("dashboard shows an error: %q", errText)
	}

	if os.Getenv("VIGIL_SCREENSHOT") != "" {
		// Let a few more probe samples arrive so that the sparklines show the failure.
		browse(t, cctx, "failure in the sparkline", 20*time.Second, chromedp.Poll[bool](
			`document.querySelectorAll('#upstream-api .cell[data-id="api-2"] svg.spark circle').length >= 3`,
			chromedp.WithPollingInterval(50*time.Millisecond)))
		png := browse(t, cctx, "screenshot", 20*time.Second, chromedp.CaptureScreenshot())
		if len(png) > 150<<10 {
			t.Fatalf("screenshot is %d bytes, want < 150 KB", len(png))
		}
		path := filepath.Join("..", "..", "docs", "dashboard.png")
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d bytes)", path, len(png))
	}

	// Names, reasons and errors come from discovery and probes: text, never markup.
	xss := `<img src=x onerror="window.pwned=1">`
	markup := browse(t, cctx, "render markup", 10*time.Second, chromedp.Evaluate[string](`(() => {
		const x = `+"`"+xss+"`"+`;
		render({version: 1, ready: true, now: new Date().toISOString(), upstreams: [{name: x, healthy: 0, total: 1, served: 0,
			panic: false, failover: 0, instances: [{id: x, address: x, port: 1, zone: x, datacenter: x, state: "unhealthy",
			reason: x, since: "", served: false, priority: 0, probe: {probes: 1, latency_ms: 1, last_error: x}, samples: []}]}],
			transitions: [{at: new Date().toISOString(), upstream: x, id: x, from: "healthy", to: "unhealthy", cause: x}]});
		return document.querySelectorAll("img").length + " " + document.body.textContent.split(x).length;
	})()`))
	if markup != "0 10" {
		t.Errorf("markup from discovery: %q, want no <img> and the text shown 9 times", markup)
	}
}

// browse runs one action in the page within a bounded time and fails the test with the page's body.
func browse[T any](t *testing.T, ctx context.Context, what string, within time.Duration, a chromedp.Action[T]) T {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	v, err := chromedp.Run(wctx, a)
	if err != nil {
		body, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("body")))
		t.Fatalf("%s: %v\nbody: %s", what, err, body)
	}
	return v
}
