package dns

import (
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/vigil-sidecar/vigil/internal/field"
)

// RateLimit is response-rate limiting (RRL) over UDP, per client network, for clients outside
// allow_recursion: a spoofed query makes vigil send its answer to the victim, so answers to any
// one network are bounded. A query over the limit gets no answer, or, every slip-th one, an
// empty truncated answer, so that a real client behind that network retries over TCP, which
// cannot be spoofed and is never limited.
type RateLimit struct {
	// ResponsesPerSecond is the steady rate of UDP answers to one client network; 0 turns
	// rate limiting off (default 200).
	ResponsesPerSecond int `yaml:"responses_per_second"`
	// Burst is how many answers a network may get at once above the rate (default 0: one
	// second's worth).
	Burst int `yaml:"burst"`
	// Slip: every slip-th query over the limit is answered truncated, the others not at all;
	// 0 never answers, 1 always answers truncated (default 2).
	Slip int `yaml:"slip"`
	// IPv4PrefixLength and IPv6PrefixLength make a client network (default 24 and 56).
	IPv4PrefixLength int `yaml:"ipv4_prefix_length"`
	IPv6PrefixLength int `yaml:"ipv6_prefix_length"`
}

// DefaultRateLimit returns the built-in rate limit.
func DefaultRateLimit() RateLimit {
	return RateLimit{ResponsesPerSecond: 200, Slip: 2, IPv4PrefixLength: 24, IPv6PrefixLength: 56}
}

// Validate checks r; errors name the field.
func (r *RateLimit) Validate() error {
	var errs field.Errors
	if r.ResponsesPerSecond < 0 {
		errs.Addf("responses_per_second", "must be >= 0 (0: off), got %d", r.ResponsesPerSecond)
	}
	if r.Burst < 0 {
		errs.Addf("burst", "must be >= 0, got %d", r.Burst)
	}
	if r.Slip < 0 || r.Slip > 10 {
		errs.Addf("slip", "must be between 0 and 10, got %d", r.Slip)
	}
	if r.IPv4PrefixLength < 1 || r.IPv4PrefixLength > 32 {
		errs.Addf("ipv4_prefix_length", "must be between 1 and 32, got %d", r.IPv4PrefixLength)
	}
	if r.IPv6PrefixLength < 1 || r.IPv6PrefixLength > 128 {
		errs.Addf("ipv6_prefix_length", "must be between 1 and 128, got %d", r.IPv6PrefixLength)
	}
	return errs.Err()
}

// What the rate limiter decides for one response.
const (
	rrlPass = iota
	rrlSlip
	rrlDrop
)

// rrlBuckets is the size of the limiter's table. Networks share the bucket their hash picks
// (with a seed chosen at start, so that an attacker cannot aim at a victim's bucket): memory is
// fixed however many networks send, and a flood from many spoofed networks only makes the
// limit stricter, never looser.
const rrlBuckets = 1 << 14

// rrl is a token bucket per client network.
type rrl struct {
	rate    float64 // tokens per nanosecond
	burst   float64
	slip    uint32
	v4, v6  int
	seed    uint64
	buckets []rrlBucket
}

type rrlBucket struct {
	mu      sync.Mutex
	tokens  float64
	last    int64 // UnixNano of the last refill; 0 for a bucket never used
	limited uint32
}

func newRRL(c RateLimit) *rrl {
	if c.ResponsesPerSecond == 0 {
		return nil
	}
	burst := c.Burst
	if burst == 0 {
		burst = c.ResponsesPerSecond
	}
	return &rrl{
		rate: float64(c.ResponsesPerSecond) / 1e9, burst: float64(burst), slip: uint32(c.Slip),
		v4: c.IPv4PrefixLength, v6: c.IPv6PrefixLength, seed: rand.Uint64(),
		buckets: make([]rrlBucket, rrlBuckets),
	}
}

// check takes a token for a response to ip at now, and says what to send.
func (l *rrl) check(ip netip.Addr, now int64) int {
	ip = ip.Unmap()
	bits := l.v6
	if ip.Is4() {
		bits = l.v4
	}
	p, _ := ip.Prefix(bits)
	a := p.Addr().As16()
	h := binary.LittleEndian.Uint64(a[:8])*0x9e3779b97f4a7c15 ^ binary.LittleEndian.Uint64(a[8:]) ^ l.seed
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	b := &l.buckets[h&(rrlBuckets-1)]
	b.mu.Lock()
	if b.last == 0 {
		b.tokens = l.burst
	} else if d := now - b.last; d > 0 {
		b.tokens = min(l.burst, b.tokens+float64(d)*l.rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		b.mu.Unlock()
		return rrlPass
	}
	b.limited++
	n := b.limited
	b.mu.Unlock()
	if l.slip > 0 && n%l.slip == 0 {
		return rrlSlip
	}
	return rrlDrop
}

// limitUDP applies the rate limit to a UDP query from a client at ip, unless the client is
// trusted (in allow_recursion). It returns rrlPass, rrlSlip or rrlDrop, counted.
func (s *Server) limitUDP(ip netip.Addr, trusted bool, now time.Time) int {
	if s.rrl == nil || trusted {
		return rrlPass
	}
	d := s.rrl.check(ip, now.UnixNano())
	switch d {
	case rrlSlip:
		s.m.limited[0].Inc()
	case rrlDrop:
		s.m.limited[1].Inc()
	}
	return d
}

// appendSlip appends a slipped answer to a query read by parseWire: its header and question,
// with TC set and no records.
func appendSlip(b, query []byte, r *request) []byte {
	b = append(b, query[:12+len(r.wire)+4]...)
	b[2] = 0x80 | query[2]&0x79 | 0x02 // QR, the opcode and RD, TC
	b[3] = 0
	binary.BigEndian.PutUint16(b[4:], 1)
	clear(b[6:12])
	return b
}

// limitMsg applies the rate limit to a UDP query that ServeDNS handles (off the fast path, or
// from miekg/dns's UDP server). It reports whether the query is done with: dropped, or
// answered with an empty truncated answer.
func (s *Server) limitMsg(w mdns.ResponseWriter, r *mdns.Msg, now time.Time) bool {
	if s.rrl == nil {
		return false
	}
	a, ok := w.RemoteAddr().(*net.UDPAddr)
	if !ok {
		return false
	}
	ip, _ := netip.AddrFromSlice(a.IP)
	switch s.limitUDP(ip, s.allowedIP(ip), now) {
	case rrlSlip:
		m := new(mdns.Msg)
		m.SetReply(r)
		m.Authoritative, m.Truncated = false, true
		w.WriteMsg(m) //nolint:errcheck // nothing to do about a client gone
		return true
	case rrlDrop:
		return true
	}
	return false
}
