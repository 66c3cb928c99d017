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
