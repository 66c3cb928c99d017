package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/vigil-sidecar/vigil/internal/testutil"
)

// 2,000 client connections at once on a forward listener limited to 1,000: exactly 1,000 are
// forwarded and held, the other 1,000 are refused at once and counted, and all the while DNS
// and the admin API answer.
func TestForwardLimitUnderLoad(t *testing.T) {
	const limit, clients = 1000, 2000
	e := newEchoServer(t)
	var v *app
	// Lenient timeouts: vigil, the backend and 2,000 clients share one race-instrumented process
	// on a loaded machine, where a 1 s connect or a 200 ms probe can time out; the limit is tested.
	cfg := strings.Replace(forwardConfig(fmt.Sprintf(`{listen: "127.0.0.1:0", max_connections: %d, drain: 1s, connect_timeout: 5s, connect_budget: 10s}`, limit), e.port()),
		"unhealthy_interval: 300ms, edge_interval: 20ms, timeout: 200ms, healthy_threshold: 1, unhealthy_threshold: 1",
		"unhealthy_interval: 6s, edge_interval: 1s, timeout: 5s, healthy_threshold: 1, unhealthy_threshold: 5", 1)
	base := startApp(t, cfg, func(x *app) { v = x })
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool {
		return upstreams(t, base)["api"].Served == 1
	}, "instance served")
	select {
	case <-v.dns.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("dns not ready")
	}
	addr := v.forward.Addr("api").String()

	// responsive: one DNS query and one admin request, each answered.
	responsive := func(when string) {
		t.Helper()
		c := &dns.Client{Timeout: 5 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion("api.service.consul.", dns.TypeA)
		r, _, err := c.Exchange(m, v.dns.Addr())
		if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("%s: DNS: %v, %v", when, err, r)
		}
		hc := http.Client{Timeout: 5 * time.Second}
		resp, err := hc.Get(base + "/healthz")
		if err != nil {
			t.Fatalf("%s: admin: %v", when, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: admin: %s", when, resp.Status)
		}
	}
	responsive("before")

	var mu sync.Mutex
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				refused.Add(1)
				return
			}
			msg := fmt.Sprintf("client %d", i)
			c.SetDeadline(time.Now().Add(20 * time.Second))
			buf := make([]byte, len(msg))
			if _, err := io.WriteString(c, msg); err == nil {
				if _, err = io.ReadFull(c, buf); err == nil && string(buf) == msg {
					ok.Add(1)
					mu.Lock()
					held = append(held, c)
					mu.Unlock()
					return
				}
			}
			refused.Add(1)
			c.Close()
		})
		if i == clients/2 {
			responsive("while connecting")
		}
	}
	wg.Wait()
	responsive("at the limit")
	if ok.Load() != limit || refused.Load() != clients-limit {
		t.Logf("metrics:\n%s", grepLines(testutil.Exposition(t, v.reg), "vigil_forward_"))
		t.Fatalf("%d forwarded, %d refused; want %d and %d", ok.Load(), refused.Load(), limit, clients-limit)
	}
	// Every refusal is counted. Under load a probe of the one instance may time out for a moment,
	// and a connection arriving then is refused for having no instance rather than at the limit.
	if n := testutil.Metric(t, v.reg, "vigil_forward_refused_connections_total", nil); n != clients-limit {
		t.Logf("metrics:\n%s", grepLines(testutil.Exposition(t, v.reg), "vigil_forward_"))
		t.Errorf("refused: %g counted, want %d", n, clients-limit)
	}
	if n := testutil.Metric(t, v.reg, "vigil_forward_refused_connections_total", map[string]string{"reason": "limit"}); n < (clients-limit)*9/10 {
		t.Errorf("refused at the limit: %g, want nearly all of %d", n, clients-limit)
	}
	if n := testutil.Metric(t, v.reg, "vigil_forward_connections_active", nil); n != limit {
		t.Errorf("active connections: %g, want %d", n, limit)
	}
}

// grepLines returns the lines of s that start with prefix.
func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
