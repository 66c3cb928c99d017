package configs

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/vigil-sidecar/vigil/internal/field"
)

// validateForwardListens checks that no forward listener takes the address of another one or
// of vigil's other listeners (admin, DNS, xDS, and the Envoy listeners vigil configures).
func (c *Config) validateForwardListens(errs *field.Errors) {
	type taken struct{ path, addr string }
	others := []taken{{"admin.listen", c.Admin.Listen}, {"dns.listen", c.DNS.Listen}, {"xds.listen", c.XDS.Listen},
		{"xds.inbound.listen", c.XDS.Inbound.Listen}}
	for i, u := range c.Upstreams {
		if u.XDS.ListenPort > 0 {
			others = append(others, taken{fmt.Sprintf("upstreams[%d].xds.listen_port", i),
				net.JoinHostPort(c.XDS.ListenerAddress, strconv.Itoa(u.XDS.ListenPort))})
		}
	}
	var seen []taken
	for i, u := range c.Upstreams {
		if u.Forward == nil || u.Forward.Listen == "" {
			continue
		}
		p := fmt.Sprintf("upstreams[%d].forward.listen", i)
		for _, o := range append(others, seen...) {
			if overlaps(u.Forward.Listen, o.addr) {
				errs.Addf(p, "%s clashes with %s (%s)", u.Forward.Listen, o.path, o.addr)
				break
			}
		}
		seen = append(seen, taken{p, u.Forward.Listen})
	}
}

// overlaps reports whether two listen addresses would take the same port: the same port (not 0)
// on the same IP address, or on any address when either is unspecified (0.0.0.0, ::, "").
func overlaps(a, b string) bool {
	ha, pa, err := net.SplitHostPort(a)
	if err != nil {
		return false
	}
	hb, pb, err := net.SplitHostPort(b)
	if err != nil || pa != pb || pa == "0" {
		return false
	}
	ia, erra := netip.ParseAddr(ha)
	ib, errb := netip.ParseAddr(hb)
	if ha == "" || hb == "" || erra == nil && ia.IsUnspecified() || errb == nil && ib.IsUnspecified() {
		return true
	}
	if erra != nil || errb != nil {
		return ha == hb
	}
	return ia.Unmap() == ib.Unmap()
}
