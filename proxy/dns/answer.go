package dns

import (
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// Header flag bits.
const (
	flagQR = 0x8000
	flagAA = 0x0400
	flagTC = 0x0200
	flagRD = 0x0100
	flagRA = 0x0080
	flagCD = 0x0010

	qnameOff = 12 // the question's name, target of the answers' compression pointers
)

// ServeDNS answers one query. Answers for vigil's domains are written straight into a
// pooled buffer from the prebuilt records: no lock, no dns.Msg, no per-record allocation.
func (s *Server) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	start := time.Now()
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	if !tcp && s.limitMsg(w, r, start) {
		return
	}
	bp := s.bufs.Get().(*[]byte)
	b, rcode, tc := s.respond((*bp)[:0], w, r, tcp)
	if b != nil {
		w.Write(b) //nolint:errcheck // nothing to do about a client gone
	}
	if cap(b) == maxTCP { // b is nil when the response went out another way
		*bp = b[:0]
	}
	s.bufs.Put(bp)
	var qtype uint16
	if len(r.Question) == 1 {
		qtype = r.Question[0].Qtype
	}
	s.observe(start, qtype, rcode, tc)
}

// respond builds the response in b. It returns nil when it has written the response
// itself (forwarded queries).
func (s *Server) respond(b []byte, w mdns.ResponseWriter, r *mdns.Msg, tcp bool) ([]byte, int, bool) {
	if r.Opcode != mdns.OpcodeQuery {
		return s.fail(b, r, mdns.RcodeNotImplemented), mdns.RcodeNotImplemented, false
	}
	if len(r.Question) != 1 {
		return s.fail(b, r, mdns.RcodeFormatError), mdns.RcodeFormatError, false
	}
	q := &r.Question[0]
	if q.Qclass != mdns.ClassINET {
		return s.fail(b, r, mdns.RcodeRefused), mdns.RcodeRefused, false
	}
	opt := r.IsEdns0()
	if opt != nil && opt.Version() != 0 {
		return s.fail(b, r, mdns.RcodeBadVers), mdns.RcodeBadVers, false
	}
	pq, ok := s.parse(strings.ToLower(q.Name))
	if !ok {
		if len(s.cfg.Recursors) > 0 && s.allowed(w.RemoteAddr()) {
			return nil, s.forward(w, r, tcp), false
		}
		return s.fail(b, r, mdns.RcodeRefused), mdns.RcodeRefused, false
	}

	req := request{
		id: r.Id, opcode: r.Opcode, rd: r.RecursionDesired, cd: r.CheckingDisabled,
		name: q.Name, qtype: q.Qtype, size: mdns.MinMsgSize,
		ra: len(s.cfg.Recursors) > 0 && s.allowed(w.RemoteAddr()),
	}
	switch {
	case tcp:
		req.size = maxTCP
	case opt != nil:
		req.size = min(max(int(opt.UDPSize()), mdns.MinMsgSize), maxUDP)
	}
	if !tcp && !s.allowed(w.RemoteAddr()) {
		req.size = min(req.size, s.cfg.UntrustedUDPSize)
	}
	if opt != nil {
		req.edns, req.do = true, opt.Do()
	}
	b, rcode, tc, err := s.answer(b, &req, &pq)
	if err != nil { // an unpackable name cannot come from Unpack, but never panic
		return s.fail(b[:0], r, mdns.RcodeFormatError), mdns.RcodeFormatError, false
	}
	return b, rcode, tc
}

// request is what answer needs of a query, from a dns.Msg or straight from the wire.
type request struct {
	id     uint16
	opcode int
	rd, cd bool
	ra     bool   // recursion available to this client
	name   string // the question name as sent, in text form (when wire is nil)
	wire   []byte // the question name as sent, in wire form
	qtype  uint16
	size   int // the most bytes the response may have
	edns   bool
	do     bool
}

// answer builds the response to a question for a name in one of vigil's domains.
func (s *Server) answer(b []byte, r *request, pq *query) ([]byte, int, bool, error) {
	size := r.size
	if r.edns {
		size -= 11 // room for our OPT record
	}
	flags := uint16(flagQR|flagAA) | uint16(r.opcode)<<11&0x7800
	if r.rd {
		flags |= flagRD
	}
	if r.cd {
		flags |= flagCD
	}
	if r.ra {
		flags |= flagRA
	}
	b = binary.BigEndian.AppendUint16(b, r.id)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = append(b, 0, 1, 0, 0, 0, 0, 0, 0)
	if r.wire != nil {
		b = append(b, r.wire...)
	} else {
		off, err := mdns.PackDomainName(r.name, b[:cap(b)], len(b), nil, false)
		if err != nil {
			return b, 0, false, err
		}
		b = b[:off]
	}
	b = binary.BigEndian.AppendUint16(b, r.qtype)
	b = binary.BigEndian.AppendUint16(b, mdns.ClassINET)
	domOff := s.domainOffset(b, pq.dom)

	var an, ns, ar uint16
	rcode, tc := mdns.RcodeSuccess, false
	switch pq.kind {
	case kindApex:
		if r.qtype == mdns.TypeSOA || r.qtype == mdns.TypeANY {
			b, an = s.appendSOA(b, domOff, qnameOff), 1
		}
	case kindService:
		b, an, ar, rcode, tc = s.appendService(b, pq, r.qtype, size)
		if rcode == mdns.RcodeNameError && !s.idx.Load().ready {
			// Discovery has not synced or instances are not all probed yet: a service
			// without served instances may have some in a moment. Do not let clients cache
			// a negative answer.
			rcode = mdns.RcodeServerFailure
		}
	case kindAddr:
		b, an = s.appendAddr(b, pq.ip, r.qtype)
	default:
		rcode = mdns.RcodeNameError
	}
	if an == 0 && rcode != mdns.RcodeServerFailure {
		b, ns = s.appendSOA(b, domOff, domOff), 1
	}
	if r.edns {
		b = appendOPT(b, r.do)
		ar++
	}
	if tc {
		flags |= flagTC
	}
	binary.BigEndian.PutUint16(b[2:], flags|uint16(rcode))
	binary.BigEndian.PutUint16(b[6:], an)
	binary.BigEndian.PutUint16(b[8:], ns)
	binary.BigEndian.PutUint16(b[10:], ar)
	return b, rcode, tc, nil
}

// appendService appends the answer (and, for SRV, additional) records of a service question.
func (s *Server) appendService(b []byte, q *query, qtype uint16, size int) ([]byte, uint16, uint16, int, bool) {
	ix := s.idx.Load()
	svc := ix.services[q.name]
	if svc == nil || (q.dc != "" && !ix.dcs[q.dc]) {
		return b, 0, 0, mdns.RcodeNameError, false
	}
	s.noteAnswer(ix)
	recs := svc.served
	if q.dc != "" {
		recs = svc.byDC[q.dc]
	}
	var stack [64]int32
	sel, exists := stack[:0], false
	wanted := qtype == mdns.TypeA || qtype == mdns.TypeAAAA || qtype == mdns.TypeSRV || qtype == mdns.TypeANY
	for i, rc := range recs {
		if q.tag != "" && !hasTag(rc.tags, q.tag) {
			continue
		}
		exists = true
		if wanted && rc.matches("", qtype) && (qtype == mdns.TypeSRV || !sameBefore(recs, rc, q.tag)) {
			sel = append(sel, int32(i))
		}
	}
	if !exists {
		return b, 0, 0, mdns.RcodeNameError, false
	}
	// Shuffle within each priority group, keeping the groups in order.
	for i := 0; i < len(sel); {
		j := i + 1
		for j < len(sel) && recs[sel[j]].prio == recs[sel[i]].prio {
			j++
		}
		g := sel[i:j]
		for k := len(g) - 1; k > 0; k-- {
			x := rand.IntN(k + 1)
			g[k], g[x] = g[x], g[k]
		}
		i = j
	}
	tc := false
	if lim := s.cfg.AnswerLimit; lim > 0 && len(sel) > lim {
		sel = sel[:lim]
	}
	var an uint16
	if qtype != mdns.TypeSRV {
		for _, i := range sel {
			rc := recs[i]
			if len(b)+2+len(rc.addr) > size {
				tc = true
				break
			}
			b = append(b, 0xc0, qnameOff)
			b = append(b, rc.addr...)
			an++
		}
		return b, an, 0, mdns.RcodeSuccess, tc
	}
	// SRV: each record with its address in the additional section, or neither.
	total := len(b)
	n := 0
	pos := len(b) // where the next SRV record starts
	for _, i := range sel {
		rc := recs[i]
		need := 2 + len(rc.srv[q.dom])
		if rc.addr != nil {
			// The additional record names the target by a pointer while the target lies within
			// a pointer's reach (14 bits), and spelled out beyond it.
			if pos+2+srvTarget < 0x4000 {
				need += 2 + len(rc.addr)
			} else {
				need += len(rc.srv[q.dom]) - srvTarget + len(rc.addr)
			}
		}
		pos += 2 + len(rc.srv[q.dom])
		if total+need > size {
			tc = true
			break
		}
		total += need
		n++
	}
	sel = sel[:n]
	answers := len(b)
	for _, i := range sel {
		b = append(b, 0xc0, qnameOff)
		b = append(b, recs[i].srv[q.dom]...)
	}
	var ar uint16
	pos = answers
	for k, i := range sel {
		rc := recs[i]
		target := pos + 2 + srvTarget
		pos += 2 + len(rc.srv[q.dom])
		if rc.addr == nil || rc.shared && addedBefore(recs, sel[:k], rc) {
			continue
		}
		if target < 0x4000 {
			b = append(b, 0xc0|byte(target>>8), byte(target))
		} else { // beyond a pointer's reach: spell the name out
			b = append(b, rc.srv[q.dom][srvTarget:]...)
		}
		b = append(b, rc.addr...)
		ar++
	}
	return b, uint16(n), ar, mdns.RcodeSuccess, tc
}

// addedBefore reports whether a record of sel has rc's address (and so the same target).
func addedBefore(recs []*rec, sel []int32, rc *rec) bool {
	for _, j := range sel {
		if string(recs[j].addr) == string(rc.addr) {
			return true
		}
	}
	return false
}

// sameBefore reports whether a record before rc in recs has its address and the tag.
func sameBefore(recs []*rec, rc *rec, tag string) bool {
	for j := rc.prevSame; j >= 0; j = recs[j].prevSame {
		if tag == "" || hasTag(recs[j].tags, tag) {
			return true
		}
	}
	return false
}

func hasTag(tags []string, t string) bool {
	for _, x := range tags {
		if x == t {
			return true
		}
	}
	return false
}

// appendAddr answers a <hex>.addr name with the address it spells.
func (s *Server) appendAddr(b []byte, ip netip.Addr, qtype uint16) ([]byte, uint16) {
	typ := uint16(mdns.TypeAAAA)
	if ip.Is4() {
		typ = mdns.TypeA
	}
	if qtype != typ && qtype != mdns.TypeANY {
		return b, 0
	}
	raw := ip.AsSlice()
	b = append(b, 0xc0, qnameOff)
	b = rrHeader(b, typ, s.idx.Load().ttls.of(""), len(raw))
	return append(b, raw...), 1
}

// appendSOA appends the SOA record of the domain at domOff, owned by the name at owner.
func (s *Server) appendSOA(b []byte, domOff, owner int) []byte {
	b = append(b, 0xc0|byte(owner>>8), byte(owner))
	rdlen := len(b) + 8
	b = rrHeader(b, mdns.TypeSOA, s.negTTL, 0)
	ptr := [2]byte{0xc0 | byte(domOff>>8), byte(domOff)}
	b = append(b, 2, 'n', 's')
	b = append(b, ptr[:]...)
	b = append(b, 10, 'h', 'o', 's', 't', 'm', 'a', 's', 't', 'e', 'r')
	b = append(b, ptr[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(s.idx.Load().version))
	b = binary.BigEndian.AppendUint32(b, 3600)  // refresh
	b = binary.BigEndian.AppendUint32(b, 600)   // retry
	b = binary.BigEndian.AppendUint32(b, 86400) // expire
	b = binary.BigEndian.AppendUint32(b, s.negTTL)
	binary.BigEndian.PutUint16(b[rdlen:], uint16(len(b)-rdlen-2))
	return b
}

// appendOPT appends our OPT record: our UDP size, the client's DO bit, no options.
func appendOPT(b []byte, do bool) []byte {
	b = append(b, 0) // root
	b = binary.BigEndian.AppendUint16(b, mdns.TypeOPT)
	b = binary.BigEndian.AppendUint16(b, maxUDP)
	var ttl uint32
	if do {
		ttl |= 1 << 15
	}
	b = binary.BigEndian.AppendUint32(b, ttl)
	return binary.BigEndian.AppendUint16(b, 0)
}

// appendHeader appends a header (counts zero but for the question) and the question.
func appendHeader(b []byte, id, flags uint16, q *mdns.Question) ([]byte, error) {
	b = binary.BigEndian.AppendUint16(b, id)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = append(b, 0, 1, 0, 0, 0, 0, 0, 0)
	off, err := mdns.PackDomainName(q.Name, b[:cap(b)], len(b), nil, false)
	if err != nil {
		return b, err
	}
	b = b[:off]
	b = binary.BigEndian.AppendUint16(b, q.Qtype)
	return binary.BigEndian.AppendUint16(b, q.Qclass), nil
}

// domainOffset returns the offset of domain d's first label inside the packed question name.
func (s *Server) domainOffset(b []byte, d int) int {
	total := 0
	for off := qnameOff; off < len(b) && b[off] != 0; off += int(b[off]) + 1 {
		total++
	}
	skip := total - s.domains[d].labels
	off := qnameOff
	for ; skip > 0; skip-- {
		off += int(b[off]) + 1
	}
	return off
}

// fail builds an error response with the request's question, if it has exactly one.
func (s *Server) fail(b []byte, r *mdns.Msg, rcode int) []byte {
	flags := uint16(flagQR) | uint16(r.Opcode)<<11&0x7800
	if r.RecursionDesired {
		flags |= flagRD
	}
	b = binary.BigEndian.AppendUint16(b[:0], r.Id)
	b = binary.BigEndian.AppendUint16(b, flags|uint16(rcode&0xf))
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0)
	if len(r.Question) == 1 && rcode != mdns.RcodeFormatError {
		if nb, err := appendHeader(b[:0], r.Id, flags|uint16(rcode&0xf), &r.Question[0]); err == nil {
			b = nb
		}
	}
	if opt := r.IsEdns0(); opt != nil {
		b = appendOPT(b, opt.Do())
		if rcode > 0xf { // extended rcode, e.g. BADVERS
			b[len(b)-6] = byte(rcode >> 4)
		}
		binary.BigEndian.PutUint16(b[10:], 1)
	}
	return b
}
