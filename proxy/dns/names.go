package dns

import (
	"encoding/hex"
	"net/netip"
	"strings"
)

// query is a parsed question name inside one of vigil's domains.
type query struct {
	dom  int // index in Server.domains
	kind int
	name string // upstream, lowercase
	tag  string // "" for any
	dc   string // "" for the local view
	ip   netip.Addr
}

const (
	kindNone    = iota // inside the domain, but no such name: NXDOMAIN
	kindApex           // the domain itself
	kindService        // [tag.]name.service[.dc] or _name._tag.service[.dc]
	kindAddr           // <hex ip>.addr[.dc]
)

// parse splits a lowercase question name; ok is false outside vigil's domains.
func (s *Server) parse(name string) (query, bool) {
	if strings.IndexByte(name, '\\') >= 0 {
		// An escaped dot or byte in presentation form ("service\.consul."): its labels are not
		// what the dots say, and no name of vigil's has one. Outside the domains.
		return query{}, false
	}
	best, rel := -1, ""
	for d := 0; d < s.nDomains; d++ {
		dom := s.domains[d].name
		switch {
		case name == dom:
			if best < 0 || len(dom) > len(s.domains[best].name) {
				best, rel = d, ""
			}
		case len(name) > len(dom) && strings.HasSuffix(name, dom) && name[len(name)-len(dom)-1] == '.':
			if best < 0 || len(dom) > len(s.domains[best].name) {
				best, rel = d, name[:len(name)-len(dom)-1]
			}
		}
	}
	if best < 0 {
		return query{}, false
	}
	q := query{dom: best}
	if rel == "" {
		q.kind = kindApex
		return q, true
	}
	var l [5]string // labels, rightmost first
	n := 0
	for rel != "" && n < len(l) {
		i := strings.LastIndexByte(rel, '.')
		l[n] = rel[i+1:]
		n++
		if i < 0 {
			rel = ""
		} else {
			rel = rel[:i]
		}
	}
	if rel != "" {
		return q, true // too many labels
	}
	kind, rest := l[0], l[1:n]
	if n >= 2 && (l[1] == "service" || l[1] == "addr") {
		kind, q.dc, rest = l[1], l[0], l[2:n]
	}
	if q.dc == s.localDC {
		q.dc = ""
	}
	switch {
	case kind == "service" && len(rest) == 1:
		q.kind, q.name = kindService, rest[0]
	case kind == "service" && len(rest) == 2 && strings.HasPrefix(rest[0], "_") && strings.HasPrefix(rest[1], "_"):
		q.kind, q.name, q.tag = kindService, rest[1][1:], rest[0][1:]
		if q.tag == "tcp" { // RFC 2782 protocol label: any tag
			q.tag = ""
		}
	case kind == "service" && len(rest) == 2:
		q.kind, q.name, q.tag = kindService, rest[0], rest[1]
	case kind == "addr" && len(rest) == 1:
		if ip, ok := parseHexIP(rest[0]); ok {
			q.kind, q.ip = kindAddr, ip
		}
	}
	return q, true
}

func parseHexIP(h string) (netip.Addr, bool) {
	var raw [16]byte
	if (len(h) != 8 && len(h) != 32) || hex.DecodedLen(len(h)) > len(raw) {
		return netip.Addr{}, false
	}
	if _, err := hex.Decode(raw[:], []byte(h)); err != nil {
		return netip.Addr{}, false
	}
	if len(h) == 8 {
		return netip.AddrFrom4([4]byte(raw[:4])), true
	}
	return netip.AddrFrom16(raw), true
}
