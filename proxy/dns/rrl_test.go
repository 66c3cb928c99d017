package dns_test

import (
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// TestRRLBuckets: the token bucket per client network, at explicit times: a burst, then slip
// and drop in turn, refilled at the rate; another network has its own bucket; one /24 (or
// /56) is one network.
func TestRRLBuckets(t *testing.T) {
	check := dns.RRL(dns.RateLimit{ResponsesPerSecond: 2, Burst: 3, Slip: 2, IPv4PrefixLength: 24, IPv6PrefixLength: 56})
	var got []string
	for i := range 7 {
		got = append(got, check("192.0.2."+itoa(i+1), 0)) // one /24
	}
	if want := []string{"pass", "pass", "pass", "drop", "slip", "drop", "slip"}; !slices.Equal(got, want) {
		t.Errorf("one network at once: %v, want %v", got, want)
	}
	if got := check("198.51.100.1", 0); got != "pass" {
		t.Errorf("another network: %s, want pass", got)
	}
	if got := check("192.0.2.9", 500*time.Millisecond); got != "pass" { // one token back after 0.5s at 2/s
		t.Errorf("after 0.5s: %s, want pass", got)
	}
	if got := check("192.0.2.9", 500*time.Millisecond); got == "pass" {
		t.Error("the refilled token was spent twice")
	}
	v6 := []string{check("2001:db8:0:1::1", 0), check("2001:db8:0:2::1", 0), check("2001:db8:0:3::1", 0), check("2001:db8:0:ff::1", 0)}
	if !slices.Equal(v6, []string{"pass", "pass", "pass", "drop"}) { // one /56
		t.Errorf("one IPv6 /56: %v", v6)
	}
}

// untrusted is a configuration in which loopback clients are outside allow_recursion.
func untrusted() dns.Config {
	cfg := dns.DefaultConfig()
	cfg.AllowRecursion = []string{"192.0.2.0/24"}
	return cfg
}

// TestUntrustedSize: a client outside allow_recursion gets at most untrusted_udp_size bytes
// over UDP whatever its EDNS0 buffer (no 4 KB answer to a 50-byte spoofed query); TCP and
// trusted clients get everything.
func TestUntrustedSize(t *testing.T) {
	ups := basic()
	ups["big"] = many(100)
	for _, miekg := range []bool{false, true} {
		var opts []func(*dns.Server)
		if miekg {
			opts = append(opts, (*dns.Server).UseMiekgUDP)
		}
		cfg := untrusted()
		cfg.RateLimit.ResponsesPerSecond = 0
		s, _ := serve(t, cfg, newTable(table.Config{}, ups), opts...)
		q := new(mdns.Msg)
		q.SetQuestion("big.service.consul.", mdns.TypeSRV)
		q.SetEdns0(4096, false)
		pkt, _ := q.Pack()
		reply := exchangeRaw(t, "udp", s.Addr(), pkt)
		var r mdns.Msg
		if err := r.Unpack(reply); err != nil {
			t.Fatal(err)
		}
		if len(reply) > 512 || !r.Truncated || len(r.Answer) == 0 {
			t.Errorf("untrusted UDP (miekg %v): %d bytes, tc %v, %d answers; want at most 512, truncated", miekg, len(reply), r.Truncated, len(r.Answer))
		}
		if tcp := exchange(t, "tcp", s.Addr(), q); tcp.Truncated || len(tcp.Answer) != 100 {
			t.Errorf("untrusted TCP: tc %v, %d answers, want all 100", tcp.Truncated, len(tcp.Answer))
		}
	}
	s, _ := serve(t, dns.DefaultConfig(), newTable(table.Config{}, ups))
	if r := ask(t, "udp", s.Addr(), "big.service.consul.", mdns.TypeSRV, edns(4096)); r.Len() <= 512 {
		t.Errorf("trusted UDP client: %d bytes, want its EDNS0 buffer used", r.Len())
	}
}

// TestRateLimit: over UDP, a client outside allow_recursion gets its burst of answers, then
// empty truncated ones (slip 1) or none (slip 0), counted; it is never limited over TCP; a
// trusted client is never limited. Names inside the domains take the UDP fast path, names
// outside it the slow path (ServeDNS); both are also run on miekg/dns's UDP server.
func TestRateLimit(t *testing.T) {
	for _, miekg := range []bool{false, true} {
		var opts []func(*dns.Server)
		if miekg {
			opts = append(opts, (*dns.Server).UseMiekgUDP)
		}
		cfg := untrusted()
		cfg.RateLimit = dns.RateLimit{ResponsesPerSecond: 1, Burst: 2, Slip: 1, IPv4PrefixLength: 24, IPv6PrefixLength: 56}
		s, reg := serve(t, cfg, newTable(table.Config{}, basic()), opts...)
		var kinds []string
		for _, name := range []string{"web.service.consul.", "example.org.", "web.service.consul.", "example.org."} {
			r := ask(t, "udp", s.Addr(), name, mdns.TypeA)
			switch {
			case r.Truncated && len(r.Answer) == 0 && len(r.Question) == 1 && r.Question[0].Name == name:
				kinds = append(kinds, "slip")
			case !r.Truncated:
				kinds = append(kinds, "answer")
			default:
				t.Errorf("malformed slip: %v", r)
			}
		}
		if want := []string{"answer", "answer", "slip", "slip"}; !slices.Equal(kinds, want) {
			t.Errorf("miekg %v: %v, want %v", miekg, kinds, want)
		}
		if r := ask(t, "tcp", s.Addr(), "web.service.consul.", mdns.TypeA); r.Truncated || len(r.Answer) == 0 {
			t.Errorf("TCP limited: %v", r)
		}
		if got := counter(t, reg, "vigil_dns_rate_limited_total"); got != 2 {
			t.Errorf("vigil_dns_rate_limited_total = %v, want 2", got)
		}
	}

	cfg := untrusted()
	cfg.RateLimit = dns.RateLimit{ResponsesPerSecond: 1, Burst: 1, Slip: 0, IPv4PrefixLength: 24, IPv6PrefixLength: 56}
	s, _ := serve(t, cfg, newTable(table.Config{}, basic()))
	ask(t, "udp", s.Addr(), "web.service.consul.", mdns.TypeA)
	c := &mdns.Client{Net: "udp", Timeout: 300 * time.Millisecond}
	m := new(mdns.Msg)
	m.SetQuestion("web.service.consul.", mdns.TypeA)
	if _, _, err := c.Exchange(m, s.Addr()); err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("slip 0, over the limit: %v, want no answer", err)
	}

	cfg = dns.DefaultConfig() // loopback is trusted
	cfg.RateLimit = dns.RateLimit{ResponsesPerSecond: 1, Burst: 1, Slip: 1, IPv4PrefixLength: 24, IPv6PrefixLength: 56}
	s, _ = serve(t, cfg, newTable(table.Config{}, basic()))
	for range 20 {
		if r := ask(t, "udp", s.Addr(), "web.service.consul.", mdns.TypeA); r.Truncated {
			t.Fatal("a trusted client was rate limited")
		}
	}
}

// TestRecursorIsVigil: a recursor that is vigil's own DNS address is refused at validation.
func TestRecursorIsVigil(t *testing.T) {
	cfg := dns.DefaultConfig()
	cfg.Listen = "127.0.0.1:8600"
	cfg.Recursors = []string{"127.0.0.1:8600", "127.0.0.1:53"}
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "recursors[0]: 127.0.0.1:8600 is vigil's own dns.listen") || strings.Contains(err.Error(), "recursors[1]") {
		t.Errorf("got %v, want recursors[0] refused only", err)
	}
	var local string
	if addrs, _ := net.InterfaceAddrs(); len(addrs) > 0 {
		local = strings.Split(addrs[len(addrs)-1].String(), "/")[0]
	}
	for _, c := range []struct {
		recursor, listen string
		want             bool
	}{
		{"127.0.0.1:8600", "127.0.0.1:8600", true},
		{"127.0.0.1:8600", "0.0.0.0:8600", true},
		{"127.0.0.2:8600", "0.0.0.0:8600", true},
		{"[::1]:8600", "[::]:8600", true},
		{"0.0.0.0:8600", "127.0.0.1:8600", true},
		{net.JoinHostPort(local, "8600"), "0.0.0.0:8600", local != ""},
		{"127.0.0.2:8600", "127.0.0.1:8600", false},
		{"127.0.0.1:53", "127.0.0.1:8600", false},
		{"192.0.2.1:8600", "0.0.0.0:8600", false},
		{"127.0.0.1:8600", "127.0.0.1:0", false},
	} {
		if got := dns.PointsAt(c.recursor, c.listen); got != c.want {
			t.Errorf("recursor %s, listen %s: %v, want %v", c.recursor, c.listen, got, c.want)
		}
	}
}
