package dns

import (
	"net"
	"net/netip"

	mdns "github.com/miekg/dns"
)

// allowed reports whether a client at addr may use the recursors.
func (s *Server) allowed(addr net.Addr) bool {
	var ip netip.Addr
	switch a := addr.(type) {
	case *net.UDPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		return false
	}
	return s.allowedIP(ip)
}

// allowedIP reports whether a client at ip may use the recursors.
func (s *Server) allowedIP(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range s.allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// forward sends r to each recursor in turn, over the client's transport, until one answers,
// and passes that answer through; SERVFAIL when none does. It returns the rcode sent.
func (s *Server) forward(w mdns.ResponseWriter, r *mdns.Msg, tcp bool) int {
	s.m.forwarded.Inc()
	c := &mdns.Client{Net: "udp", Timeout: s.cfg.RecursorTimeout}
	if tcp {
		c.Net = "tcp"
	}
	for _, addr := range s.cfg.Recursors {
		resp, _, err := c.Exchange(r, addr)
		if err != nil {
			s.m.fwdErrors.Inc()
			s.log.Debug("dns: recursor failed", "recursor", addr, "name", r.Question[0].Name, "err", err)
			continue
		}
		resp.Id = r.Id
		w.WriteMsg(resp) //nolint:errcheck // nothing to do about a client gone
		return resp.Rcode
	}
	m := new(mdns.Msg)
	m.SetRcode(r, mdns.RcodeServerFailure)
	m.RecursionAvailable = true
	if opt := r.IsEdns0(); opt != nil { // RFC 6891 §7: answer EDNS with EDNS
		m.SetEdns0(opt.UDPSize(), opt.Do())
	}
	w.WriteMsg(m) //nolint:errcheck
	return mdns.RcodeServerFailure
}
