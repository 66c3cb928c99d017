package dns_test

import (
	"encoding/hex"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// refAnswer is what vigil must answer to one question, built from the table snapshot with
// miekg/dns's types, independently of the server's prebuilt wire records and of its name
// parser: the rcode and the records as text, in no order.
type refAnswer struct {
	rcode    int
	aa       bool
	answer   []string
	extra    []string // SRV targets' addresses
	negative bool     // the domain's SOA in the authority section
	msg      *mdns.Msg
}

// refServer is the reference's view of the configuration.
type refServer struct {
	domains  []string // lowercase, fully qualified
	localDC  string
	ttl      uint32
	snap     *table.Snapshot
	services map[string]*table.Upstream // by lowercase name
}

func newRef(cfg dns.Config, tb *table.Table) *refServer {
	r := &refServer{localDC: strings.ToLower(cfg.Datacenter), ttl: uint32(cfg.TTL.Seconds()), snap: tb.Snapshot(), services: map[string]*table.Upstream{}}
	for _, d := range []string{cfg.Domain, cfg.AltDomain} {
		if d != "" {
			r.domains = append(r.domains, strings.ToLower(mdns.Fqdn(d)))
		}
	}
	for name, u := range r.snap.Upstreams {
		r.services[strings.ToLower(name)] = u
	}
	return r
}

// answer returns the reference answer to q, and false for a question it leaves aside: a
// datacenter other than the local one (its view is the table's per-datacenter policy).
func (r *refServer) answer(q mdns.Question) (refAnswer, bool) {
	ref := refAnswer{rcode: mdns.RcodeRefused, msg: new(mdns.Msg)}
	name := strings.ToLower(q.Name)
	labels := mdns.SplitDomainName(name)
	if strings.Contains(name, `\`) || q.Qclass != mdns.ClassINET {
		return ref, true // escaped: not vigil's names
	}
	dom := ""
	for _, d := range r.domains {
		if (name == d || mdns.IsSubDomain(d, name)) && len(d) > len(dom) {
			dom = d
		}
	}
	if dom == "" {
		return ref, true
	}
	ref.rcode, ref.aa = mdns.RcodeSuccess, true
	rel := labels[:len(labels)-mdns.CountLabel(dom)]
	add := func(rr mdns.RR) {
		ref.answer = append(ref.answer, rr.String())
		ref.msg.Answer = append(ref.msg.Answer, rr)
	}
	hdr := func(owner string, t uint16) mdns.RR_Header {
		return mdns.RR_Header{Name: owner, Rrtype: t, Class: mdns.ClassINET, Ttl: r.ttl}
	}
	switch {
	case len(rel) == 0: // the apex
		if q.Qtype == mdns.TypeSOA || q.Qtype == mdns.TypeANY {
			ref.answer = append(ref.answer, "SOA")
		} else {
			ref.negative = true
		}
		return ref, true
	case len(rel) > 5:
		ref.rcode, ref.negative = mdns.RcodeNameError, true
		return ref, true
	}
	// KIND[.DC] at the right, then what the kind takes.
	kind, dc, rest := rel[len(rel)-1], "", rel[:len(rel)-1]
	if len(rel) >= 2 && (rel[len(rel)-2] == "service" || rel[len(rel)-2] == "addr") {
		kind, dc, rest = rel[len(rel)-2], rel[len(rel)-1], rel[:len(rel)-2]
	}
	if dc != "" && dc != r.localDC {
		return ref, false
	}
	switch {
	case kind == "addr" && len(rest) == 1 && (len(rest[0]) == 8 || len(rest[0]) == 32):
		raw, err := hex.DecodeString(rest[0])
		if err != nil {
			break
		}
		ip, _ := netip.AddrFromSlice(raw)
		switch {
		case ip.Is4() && (q.Qtype == mdns.TypeA || q.Qtype == mdns.TypeANY):
			add(&mdns.A{Hdr: hdr(q.Name, mdns.TypeA), A: net.IP(raw)})
		case ip.Is6() && (q.Qtype == mdns.TypeAAAA || q.Qtype == mdns.TypeANY):
			add(&mdns.AAAA{Hdr: hdr(q.Name, mdns.TypeAAAA), AAAA: net.IP(raw)})
		}
		ref.negative = len(ref.answer) == 0
		return ref, true
	case kind == "service" && (len(rest) == 1 || len(rest) == 2):
		svc, tag := rest[len(rest)-1], ""
		if len(rest) == 2 {
			tag = rest[0]
			if strings.HasPrefix(rest[0], "_") && strings.HasPrefix(rest[1], "_") { // RFC 2782: _svc._tag
				svc, tag = rest[0][1:], rest[1][1:]
				if tag == "tcp" { // the protocol label: any tag
					tag = ""
				}
			}
		}
		r.service(&ref, q, dom, svc, tag, hdr, add)
		return ref, true
	}
	ref.rcode, ref.negative = mdns.RcodeNameError, true
	return ref, true
}

func (r *refServer) service(ref *refAnswer, q mdns.Question, dom, name, tag string, hdr func(string, uint16) mdns.RR_Header, add func(mdns.RR)) {
	u := r.services[name]
	var matching []*table.Instance
	if u != nil {
		for _, in := range u.Served {
			if tag == "" || slices.ContainsFunc(in.Tags, func(t string) bool { return strings.EqualFold(t, tag) }) {
				matching = append(matching, in)
			}
		}
	}
	if len(matching) == 0 {
		ref.rcode, ref.negative = mdns.RcodeNameError, true
		if !r.snap.Ready {
			ref.rcode, ref.negative = mdns.RcodeServerFailure, false
		}
		return
	}
	addrRR := func(owner string, ip netip.Addr) mdns.RR {
		if ip.Is4() {
			return &mdns.A{Hdr: hdr(owner, mdns.TypeA), A: net.IP(ip.AsSlice())}
		}
		return &mdns.AAAA{Hdr: hdr(owner, mdns.TypeAAAA), AAAA: net.IP(ip.AsSlice())}
	}
	seen := map[netip.Addr]bool{}
	for _, in := range matching {
		ip, err := netip.ParseAddr(in.Address)
		ip = ip.Unmap()
		switch q.Qtype {
		case mdns.TypeA, mdns.TypeAAAA, mdns.TypeANY:
			want := q.Qtype == mdns.TypeANY || (q.Qtype == mdns.TypeA) == ip.Is4()
			if err == nil && want && !seen[ip] {
				seen[ip] = true
				add(addrRR(q.Name, ip))
			}
		case mdns.TypeSRV:
			target := mdns.Fqdn(strings.ToLower(in.Address))
			if _, ok := mdns.IsDomainName(target); !ok {
				target = "."
			}
			if err == nil {
				dc := strings.ToLower(in.Datacenter)
				if dc == "" {
					dc = r.localDC
				}
				target = hex.EncodeToString(ip.AsSlice()) + ".addr." + dc + "." + dom
				if !seen[ip] {
					seen[ip] = true
					rr := addrRR(target, ip)
					ref.extra = append(ref.extra, rr.String())
					ref.msg.Extra = append(ref.msg.Extra, rr)
				}
			}
			add(&mdns.SRV{Hdr: hdr(q.Name, mdns.TypeSRV), Priority: uint16(in.Priority + 1),
				Weight: uint16(min(max(in.Weight, 1), 0xffff)), Port: uint16(in.Port), Target: target})
		}
	}
	ref.negative = len(ref.answer) == 0
}

// compare checks a response against the reference; limit is the most bytes it may have.
func (ref *refAnswer) compare(t *testing.T, how string, resp *mdns.Msg, limit int) {
	t.Helper()
	if resp.Rcode != ref.rcode || resp.Authoritative != ref.aa {
		t.Fatalf("%s: rcode %s aa %v, reference %s aa %v\n%v", how, mdns.RcodeToString[resp.Rcode], resp.Authoritative,
			mdns.RcodeToString[ref.rcode], ref.aa, resp)
	}
	var got, extra []string
	for _, rr := range resp.Answer {
		if rr.Header().Rrtype == mdns.TypeSOA {
			got = append(got, "SOA")
			continue
		}
		got = append(got, rr.String())
	}
	for _, rr := range resp.Extra {
		if rr.Header().Rrtype != mdns.TypeOPT {
			extra = append(extra, rr.String())
		}
	}
	negative := len(resp.Ns) == 1 && resp.Ns[0].Header().Rrtype == mdns.TypeSOA
	if negative != ref.negative || len(resp.Ns) > 1 {
		t.Fatalf("%s: authority %v, reference negative %v", how, resp.Ns, ref.negative)
	}
	subset := func(a, b []string) bool {
		for _, x := range a {
			if !slices.Contains(b, x) {
				return false
			}
		}
		return true
	}
	if !subset(got, ref.answer) || !subset(extra, ref.extra) {
		t.Fatalf("%s: records not in the reference:\n%v\nreference answer %q\nextra %q", how, resp, ref.answer, ref.extra)
	}
	if !resp.Truncated {
		slices.Sort(got)
		slices.Sort(extra)
		want, wantExtra := slices.Sorted(slices.Values(ref.answer)), slices.Sorted(slices.Values(ref.extra))
		if !slices.Equal(got, want) || !slices.Equal(extra, wantExtra) {
			t.Fatalf("%s: not truncated but records differ:\n%v\nreference answer %q\nextra %q", how, resp, want, wantExtra)
		}
		return
	}
	// Truncated: something must be left out, and what is left must not be nothing for lack of room.
	ref.msg.Compress = true
	if full := ref.msg.Len() + 12 + 11; full <= limit {
		t.Fatalf("%s: truncated, but the %d-byte reference answer fits %d bytes:\n%v", how, full, limit, resp)
	}
	if len(resp.Answer) == 0 && len(ref.answer) > 0 {
		t.Fatalf("%s: truncated to nothing", how)
	}
}

// refFixture is a table with every kind of instance the answers distinguish.
func refFixture() *table.Table {
	ups := basic()
	ups["big"] = many(300, tags("Big"))
	ups["mixed"] = []inst{
		up("m1", "127.0.0.41", 1, health.Healthy, tags("a")),
		up("m2", "127.0.0.41", 2, health.Healthy, tags("b")), // shares m1's address
		up("m3", "2001:db8::41", 3, health.Healthy, tags("a", "tcp")),
		up("m4", "db.example.org", 4, health.Healthy, tags("a")),
		up("m5", "127.0.0.45", 5, health.Unhealthy, tags("a")),
	}
	ups["names"] = []inst{up("n1", "only.example.org", 53, health.Healthy)}
	return newTable(table.Config{}, ups)
}

// FuzzReference asks a question (name, type, EDNS0 buffer, transport) of ServeDNS and of the
// UDP fast path, and checks both answers against the reference answer. Seeds run as a test.
func FuzzReference(f *testing.F) {
	for _, name := range []string{
		"web.service.consul.", "WEB.Service.consul.", "v1.web.service.consul.", "primary.web.service.dc1.consul.",
		"_web._v2.service.consul.", "_web._tcp.service.consul.", "_mixed._tcp.service.consul.", "tcp.mixed.service.consul.",
		"mixed.service.consul.", "a.mixed.service.consul.", "b.mixed.service.consul.", "names.service.consul.",
		"big.service.consul.", "big.big.service.consul.", "v6.service.consul.", "down.service.consul.", "far.service.consul.",
		"far.service.dc2.consul.", "nope.service.consul.", "7f00000b.addr.consul.", "7f00000b.addr.dc1.consul.",
		"20010db8000000000000000000000041.addr.consul.", "zz00000b.addr.consul.", "consul.", "service.consul.",
		"a.b.c.d.e.f.consul.", "x.consul.", "example.org.", `web\.service.consul.`, "web.service.consul.vigil.internal.",
		"web.service.vigil.internal.", "web.service.dc1.vigil.internal.",
	} {
		for _, qt := range []uint16{mdns.TypeA, mdns.TypeAAAA, mdns.TypeSRV, mdns.TypeANY, mdns.TypeTXT, mdns.TypeSOA} {
			f.Add(name, qt, uint16(0), false)
		}
		f.Add(name, mdns.TypeSRV, uint16(1232), false)
		f.Add(name, mdns.TypeSRV, uint16(4096), true)
	}
	cfg := dns.DefaultConfig()
	cfg.AltDomain = "vigil.internal."
	tb := refFixture()
	s, err := dns.New(cfg, tb, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	ref := newRef(cfg, tb)
	f.Fuzz(func(t *testing.T, name string, qtype uint16, size uint16, tcp bool) {
		if _, ok := mdns.IsDomainName(name); !ok || !strings.HasSuffix(name, ".") {
			return
		}
		q := new(mdns.Msg)
		q.SetQuestion(name, qtype)
		if size > 0 {
			q.SetEdns0(size, false)
		}
		pkt, err := q.Pack()
		if err != nil {
			return
		}
		var req mdns.Msg
		if err := req.Unpack(pkt); err != nil {
			return
		}
		want, ok := ref.answer(req.Question[0])
		if !ok {
			return
		}
		limit := 512
		if tcp {
			limit = 65535
		} else if size > 0 {
			limit = max(512, min(int(size), 4096))
		}
		w := &recorder{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}}
		if tcp {
			w.remote = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
		}
		s.ServeDNS(w, &req)
		var resp mdns.Msg
		if len(w.out) != 1 || resp.Unpack(w.out[0]) != nil {
			t.Fatalf("ServeDNS wrote %d messages", len(w.out))
		}
		want.compare(t, "ServeDNS", &resp, limit)
		if fast, ok := s.AnswerWire(pkt); ok && !tcp {
			var fr mdns.Msg
			if err := fr.Unpack(fast); err != nil {
				t.Fatalf("fast path answer does not parse: %v", err)
			}
			want.compare(t, "fast path", &fr, limit)
		}
	})
}
