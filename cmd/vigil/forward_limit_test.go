package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
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
	base := startApp(t, forwardConfig(fmt.Sprintf(`{listen: "127.0.0.1:0", max_connections: %d, drain: 1s}`, limit), e.port()),
		func(x *app) { v = x })
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
		t.Fatalf("%d forwarded, %d refused; want %d and %d", ok.Load(), refused.Load(), limit, clients-limit)
	}
	if n := testutil.Metric(t, v.reg, "vigil_forward_refused_connections_total", map[string]string{"reason": "limit"}); n != clients-limit {
		t.Errorf("refused at the limit: %g, want %d", n, clients-limit)
	}
	if n := testutil.Metric(t, v.reg, "vigil_forward_connections_active", nil); n != limit {
		t.Errorf("active connections: %g, want %d", n, limit)
	}
}
