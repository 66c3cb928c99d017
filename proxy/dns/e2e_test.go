package dns_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// backend is a real HTTP server on loopback that can be killed and revived on the same address.
type backend struct {
	addr string
	srv  *http.Server
	done chan struct{}
}

func (b *backend) start(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", b.addr)
	if err != nil {
		t.Fatalf("listen %s: %v", b.addr, err)
	}
	b.addr = l.Addr().String()
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.Write([]byte("ok"))
			return
		}
		http.NotFound(w, r)
	})}
	b.done = make(chan struct{})
	go func() {
		defer close(b.done)
		if err := b.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve %s: %v", b.addr, err)
		}
	}()
}

func (b *backend) stop() {
	if b.srv != nil {
		b.srv.Close()
		<-b.done
		b.srv = nil
	}
}

// dig runs dig over net and returns the addresses answered for name.
func dig(t *testing.T, bin, addr, nt, name string) []string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	args := []string{"+short", "+time=2", "+tries=1", "@" + host, "-p", port, name, "A"}
	if nt == "tcp" {
		args = append(args, "+tcp")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).Output()
	if err != nil {
		t.Fatalf("dig %v: %v", args, err)
	}
	got := strings.Fields(string(out))
	slices.Sort(got)
	return got
}

// TestEndToEndDig runs the real health Checker against real HTTP servers, feeds the table,
// and asks vigil's DNS with dig: a killed instance disappears within
// unhealthy_threshold × interval (plus a margin), and comes back once revived.
func TestEndToEndDig(t *testing.T) {
	digBin := testutil.Need(t, "dig")
	ips := []string{"127.0.0.61", "127.0.0.62", "127.0.0.63"}
	backends := make([]*backend, len(ips))
	mem := discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{"web": {Name: "web"}}}
	for i, ip := range ips {
		backends[i] = &backend{addr: ip + ":0"}
		backends[i].start(t)
		defer backends[i].stop()
		_, port, _ := net.SplitHostPort(backends[i].addr)
		p, _ := net.LookupPort("tcp", port)
		mem.Upstreams["web"].Instances = append(mem.Upstreams["web"].Instances,
			discovery.Instance{ID: "web-" + string(rune('a'+i)), Address: ip, Port: p, Weight: 1})
	}

	check := health.DefaultCheck()
	check.Kind = "http"
	check.HTTP.Path = "/healthz"
	check.Interval, check.UnhealthyInterval, check.EdgeInterval = 200*time.Millisecond, 200*time.Millisecond, 100*time.Millisecond
	check.Timeout, check.Jitter = 100*time.Millisecond, 0.1
	check.HealthyThreshold, check.UnhealthyThreshold = 2, 2

	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	members := make(chan discovery.Membership, 1)
	members <- mem
	checker, err := health.NewChecker(health.Options{Default: check, Sink: tb, Members: members})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	checked := make(chan error, 1)
	go func() { checked <- checker.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-checked; err != nil {
			t.Errorf("checker: %v", err)
		}
	}()
	s, _ := serve(t, dns.DefaultConfig(), tb)

	const name = "web.service.consul."
	wantAll := func(nt string) {
		testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() bool {
			return slices.Equal(dig(t, digBin, s.Addr(), nt, name), ips)
		}, "dig does not return every instance")
	}
	for _, nt := range nets {
		wantAll(nt)
	}

	// Budget: the failing probes, their jitter, and a margin for scheduling, the index
	// rebuild and dig itself on a busy 2-core machine.
	budget := time.Duration(check.UnhealthyThreshold)*check.Interval + time.Duration(float64(check.Interval)*check.Jitter) + 500*time.Millisecond
	for _, nt := range nets {
		t.Run(nt, func(t *testing.T) {
			victim := backends[1]
			victim.stop()
			killed := time.Now()
			testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() bool {
				return !slices.Contains(dig(t, digBin, s.Addr(), nt, name), ips[1])
			}, "dig still returns the killed instance")
			// Order, not wall-clock: the instance leaves; how fast is measured by make bench-failover.
			t.Logf("killed instance gone from dig after %s (nominal %s)", time.Since(killed).Round(time.Millisecond), budget)
			if got := dig(t, digBin, s.Addr(), nt, name); !slices.Equal(got, []string{ips[0], ips[2]}) {
				t.Errorf("after the kill dig returns %v, want the two live instances", got)
			}
			victim.start(t)
			revived := time.Now()
			wantAll(nt)
			t.Logf("revived instance back in dig after %s", time.Since(revived).Round(time.Millisecond))
		})
	}
}
