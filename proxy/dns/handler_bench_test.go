package dns_test

import (
	"net"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// discard is a ResponseWriter that drops what is written.
type discard struct{ recorder }

func (w *discard) Write(b []byte) (int, error) { return len(b), nil }

// BenchmarkServeDNSHandler measures the handler alone (no sockets): time and allocations per query.
func BenchmarkServeDNSHandler(b *testing.B) {
	s, err := dns.New(dns.DefaultConfig(), newTable(table.Config{}, map[string][]inst{"web": many(8)}), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, qt := range []uint16{mdns.TypeA, mdns.TypeSRV} {
		b.Run(mdns.TypeToString[qt], func(b *testing.B) {
			m := new(mdns.Msg)
			m.SetQuestion("web.service.consul.", qt)
			w := &discard{recorder{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}}}
			b.ReportAllocs()
			for b.Loop() {
				s.ServeDNS(w, m)
			}
		})
	}
}

// BenchmarkRateLimit measures the handler with and without response-rate limiting: the same
// query from a client outside allow_recursion, whose bucket never runs dry.
func BenchmarkRateLimit(b *testing.B) {
	for _, on := range []bool{false, true} {
		cfg := dns.DefaultConfig()
		cfg.AllowRecursion = []string{"192.0.2.0/24"}
		cfg.RateLimit.ResponsesPerSecond = 0
		name := "off"
		if on {
			cfg.RateLimit.ResponsesPerSecond, name = 1_000_000_000, "on"
		}
		s, err := dns.New(cfg, newTable(table.Config{}, map[string][]inst{"web": many(8)}), nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			m := new(mdns.Msg)
			m.SetQuestion("web.service.consul.", mdns.TypeA)
			w := &discard{recorder{remote: &net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 5353}}}
			b.ReportAllocs()
			for b.Loop() {
				s.ServeDNS(w, m)
			}
		})
	}
}
