package dns

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// serveUDP answers the queries arriving on pc until pc is closed. A plain query for a name
// in vigil's domains (one IN question, at most an OPT record) is read straight from the wire
// and answered in this goroutine, with no allocation but the name; anything else is unpacked
// by miekg/dns and goes through ServeDNS in a goroutine of its own (tracked by slow), so that
// a forwarded query never holds up the socket.
func (s *Server) serveUDP(pc *net.UDPConn, slow *sync.WaitGroup) error {
	in := make([]byte, maxUDP)
	out := make([]byte, 0, maxUDP)
	var name [256]byte
	for {
		n, from, err := pc.ReadFromUDPAddrPort(in)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil // shutdown sets a deadline in the past
			}
			continue // e.g. a message larger than the buffer
		}
		start := time.Now()
		req, lname, ok := parseWire(in[:n], &name)
		var pq query
		if ok {
			pq, ok = s.parse(lname)
		}
		if !ok {
			select {
			case s.slowSem <- struct{}{}:
				pkt := append([]byte(nil), in[:n]...)
				slow.Go(func() {
					defer func() { <-s.slowSem }()
					s.serveSlow(pc, from, pkt)
				})
			default: // as many as maxSlow in flight already (slow recursors, or a flood)
				s.m.dropped.Inc()
			}
			continue
		}
		trusted := s.allowedIP(from.Addr())
		switch s.limitUDP(from.Addr(), trusted, start) {
		case rrlSlip:
			pc.WriteToUDPAddrPort(appendSlip(out[:0], in[:n], &req), from) //nolint:errcheck
			continue
		case rrlDrop:
			continue
		}
		req.ra = len(s.cfg.Recursors) > 0 && trusted
		if !trusted {
			req.size = min(req.size, s.cfg.UntrustedUDPSize)
		}
		b, rcode, tc, _ := s.answer(out[:0], &req, &pq) // the name came from the wire: it packs
		pc.WriteToUDPAddrPort(b, from)                  //nolint:errcheck // nothing to do about a client gone
		s.observe(start, req.qtype, rcode, tc)
	}
}

// maxSlow bounds the UDP queries handled off the fast path at once, across sockets.
const maxSlow = 1024

// serveSlow answers one packet the fast path left aside, as the miekg/dns server would.
func (s *Server) serveSlow(pc *net.UDPConn, from netip.AddrPort, pkt []byte) {
	w := &udpWriter{pc: pc, to: from}
	r := new(mdns.Msg)
	if err := checkWireOrUnpack(r, pkt); err != nil {
		if len(pkt) < 12 || pkt[2]&0x80 != 0 {
			return // no header, or a response: no reply at all
		}
		// A readable header: FORMERR, as miekg/dns answers a message it cannot unpack.
		fe := make([]byte, 12)
		copy(fe, pkt[:4])
		fe[2] = 0x80 | pkt[2]&0x79 // QR, the opcode and RD
		fe[3] = mdns.RcodeFormatError
		w.Write(fe) //nolint:errcheck
		s.observe(time.Now(), 0, mdns.RcodeFormatError, false)
		return
	}
	if r.Response {
		return
	}
	s.ServeDNS(w, r)
}

// checkWireOrUnpack unpacks pkt into r, after checkWire.
func checkWireOrUnpack(r *mdns.Msg, pkt []byte) error {
	if err := checkWire(pkt); err != nil {
		return err
	}
	return r.Unpack(pkt)
}

func (s *Server) observe(start time.Time, qtype uint16, rcode int, tc bool) {
	s.m.count(qtype, rcode)
	if tc {
		s.m.truncated.Inc()
	}
	s.m.latency.Observe(time.Since(start).Seconds())
}

// parseWire reads a plain query: a header with the QR bit clear, opcode QUERY, one question of
// class IN whose name has only letters, digits, '-' and '_', and no record but an OPT of
// version 0. It returns the request, and the name in lowercase text form built in buf.
func parseWire(p []byte, buf *[256]byte) (request, string, bool) {
	var r request
	if len(p) < 12+5 || p[2]&0xf8 != 0 { // QR and opcode
		return r, "", false
	}
	qd, an, ns, ar := binary.BigEndian.Uint16(p[4:]), binary.BigEndian.Uint16(p[6:]), binary.BigEndian.Uint16(p[8:]), binary.BigEndian.Uint16(p[10:])
	if qd != 1 || an != 0 || ns != 0 || ar > 1 {
		return r, "", false
	}
	r.id = binary.BigEndian.Uint16(p)
	r.rd, r.cd = p[2]&0x01 != 0, p[3]&0x10 != 0
	off, n := 12, 0
	for {
		if off >= len(p) {
			return r, "", false
		}
		l := int(p[off])
		if l == 0 {
			break
		}
		if l > 63 || off+1+l >= len(p) || n+l+1 > len(buf) {
			return r, "", false // a compression pointer, or too long
		}
		for _, c := range p[off+1 : off+1+l] {
			switch {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			case c >= 'A' && c <= 'Z':
				c += 'a' - 'A'
			default:
				return r, "", false
			}
			buf[n] = c
			n++
		}
		buf[n] = '.'
		n++
		off += 1 + l
	}
	if n == 0 || off+5 > len(p) {
		return r, "", false
	}
	r.wire = p[12 : off+1]
	r.qtype = binary.BigEndian.Uint16(p[off+1:])
	if binary.BigEndian.Uint16(p[off+3:]) != mdns.ClassINET {
		return r, "", false
	}
	off += 5
	r.size = mdns.MinMsgSize
	if ar == 1 { // OPT: root name, type, UDP size, extended rcode, version, flags, rdata
		if off+11 > len(p) || p[off] != 0 || binary.BigEndian.Uint16(p[off+1:]) != mdns.TypeOPT || p[off+6] != 0 {
			return r, "", false
		}
		r.edns = true
		r.size = min(max(int(binary.BigEndian.Uint16(p[off+3:])), mdns.MinMsgSize), maxUDP)
		r.do = p[off+7]&0x80 != 0
		off += 11 + int(binary.BigEndian.Uint16(p[off+9:]))
	}
	if off != len(p) {
		return r, "", false
	}
	return r, string(buf[:n]), true
}

// udpWriter is the ResponseWriter of a query answered off the fast path.
type udpWriter struct {
	pc *net.UDPConn
	to netip.AddrPort
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.pc.LocalAddr() }
func (w *udpWriter) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(w.to) }
func (w *udpWriter) WriteMsg(m *mdns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
func (w *udpWriter) Write(b []byte) (int, error) { return w.pc.WriteToUDPAddrPort(b, w.to) }
func (w *udpWriter) Close() error                { return nil }
func (w *udpWriter) TsigStatus() error           { return nil }
func (w *udpWriter) TsigTimersOnly(bool)         {}
func (w *udpWriter) Hijack()                     {}
