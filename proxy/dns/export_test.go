package dns

import (
	"net/netip"
	"time"
)

// AnswerWire answers pkt as the UDP fast path does; ok is false when the fast path leaves
// it to the miekg/dns path.
func (s *Server) AnswerWire(pkt []byte) ([]byte, bool) {
	var name [256]byte
	req, lname, ok := parseWire(pkt, &name)
	if !ok {
		return nil, false
	}
	pq, ok := s.parse(lname)
	if !ok {
		return nil, false
	}
	b, _, _, err := s.answer(make([]byte, 0, maxUDP), &req, &pq)
	return b, err == nil
}

// UseMiekgUDP makes Run serve UDP as it does on a wildcard address.
func (s *Server) UseMiekgUDP() { s.miekgUDP = true }

// RRL is the rate limiter of c, checked at explicit times: "pass", "slip" or "drop".
func RRL(c RateLimit) func(ip string, now time.Duration) string {
	l := newRRL(c)
	return func(ip string, now time.Duration) string {
		return [...]string{"pass", "slip", "drop"}[l.check(netip.MustParseAddr(ip), int64(now)+1)]
	}
}

// PointsAt reports whether a recursor address reaches a listen address.
func PointsAt(recursor, listen string) bool { return pointsAt(recursor, listen) }
