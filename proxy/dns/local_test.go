package dns_test

import (
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// The local service's reserved upstream (local:NAME) is held by the table for the registration
// and the admin API; DNS does not serve it, under any spelling of its name.
func TestLocalServiceNotServed(t *testing.T) {
	local := table.LocalUpstream("web")
	s, _ := serve(t, dns.DefaultConfig(), newTable(table.Config{}, map[string][]inst{
		"api": {up("a1", "127.0.0.11", 8081, health.Healthy)},
		local: {up("l1", "127.0.0.99", 8080, health.Healthy)},
	}))
	addr := s.Addr()
	if r := ask(t, "udp", addr, "api.service.consul.", mdns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("api: %v", r)
	}
	for _, name := range []string{local + ".service.consul.", local + ".service.dc1.consul."} {
		for _, qt := range []uint16{mdns.TypeA, mdns.TypeSRV} {
			r := ask(t, "udp", addr, name, qt)
			if len(r.Answer) != 0 || r.Rcode != mdns.RcodeNameError {
				t.Errorf("%s %s: rcode %s, answers %v; want NXDOMAIN", name, mdns.TypeToString[qt], mdns.RcodeToString[r.Rcode], r.Answer)
			}
		}
	}
}
