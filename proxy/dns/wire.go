package dns

import (
	"encoding/binary"
	"errors"
	"net"
	"time"

	mdns "github.com/miekg/dns"
)

// Malformed messages that miekg/dns's Unpack lets through (it trusts the message's end over
// its header counts, and ignores bytes after the last record), answered FORMERR
// (RFC 6891 §6.1.1 for OPT; RFC 1035 for the rest).
var (
	errShort      = errors.New("dns: message shorter than its header counts")
	errTrailing   = errors.New("dns: bytes after the last record")
	errTwoOPT     = errors.New("dns: more than one OPT record")
	errOPTPlace   = errors.New("dns: OPT record outside the additional section or not owned by the root")
	errLabelType  = errors.New("dns: unknown label type")
	errHeaderSize = errors.New("dns: no header")
)

// checkWire walks a message's sections by their header counts and reports the first way the
// message is malformed: a section shorter than its count, bytes after the last record, or an
// OPT record that is not the only one, in the additional section, owned by the root.
func checkWire(p []byte) error {
	if len(p) < 12 {
		return errHeaderSize
	}
	off, opts := 12, 0
	for sec := range 4 {
		n := int(binary.BigEndian.Uint16(p[4+2*sec:]))
		for range n {
			start := off
			var err error
			if off, err = skipName(p, off); err != nil {
				return err
			}
			if sec == 0 { // a question: type and class
				if off += 4; off > len(p) {
					return errShort
				}
				continue
			}
			if off+10 > len(p) {
				return errShort
			}
			typ, rdlen := binary.BigEndian.Uint16(p[off:]), int(binary.BigEndian.Uint16(p[off+8:]))
			if off += 10 + rdlen; off > len(p) {
				return errShort
			}
			if typ == mdns.TypeOPT {
				if sec != 3 || p[start] != 0 {
					return errOPTPlace
				}
				if opts++; opts > 1 {
					return errTwoOPT
				}
			}
		}
	}
	if off != len(p) {
		return errTrailing
	}
	return nil
}

// skipName returns the offset after the name at off (a compression pointer ends it).
func skipName(p []byte, off int) (int, error) {
	for {
		if off >= len(p) {
			return 0, errShort
		}
		l := int(p[off])
		switch l & 0xc0 {
		case 0x00:
			if l == 0 {
				return off + 1, nil
			}
			off += 1 + l
		case 0xc0:
			if off+2 > len(p) {
				return 0, errShort
			}
			return off + 2, nil
		default:
			return 0, errLabelType
		}
	}
}

// strictReader checks each query that miekg/dns's servers read (TCP, and UDP on a wildcard
// address) with checkWire, and turns a malformed one into a message that Unpack refuses, so
// that the server answers it FORMERR as any unpackable query, with the query's ID, opcode
// and RD bit. Responses and messages without a header are passed on as they are.
type strictReader struct {
	r  mdns.Reader
	pc mdns.PacketConnReader // nil if r does not read net.PacketConns
}

func decorateStrict(r mdns.Reader) mdns.Reader {
	pc, _ := r.(mdns.PacketConnReader)
	return &strictReader{r: r, pc: pc}
}

func (s *strictReader) ReadTCP(conn net.Conn, timeout time.Duration) ([]byte, error) {
	m, err := s.r.ReadTCP(conn, timeout)
	return poison(m), err
}

func (s *strictReader) ReadUDP(conn *net.UDPConn, timeout time.Duration) ([]byte, *mdns.SessionUDP, error) {
	m, sess, err := s.r.ReadUDP(conn, timeout)
	return poison(m), sess, err
}

func (s *strictReader) ReadPacketConn(conn net.PacketConn, timeout time.Duration) ([]byte, net.Addr, error) {
	if s.pc == nil {
		return nil, nil, errors.New("dns: reader cannot read packet connections")
	}
	m, addr, err := s.pc.ReadPacketConn(conn, timeout)
	return poison(m), addr, err
}

// poison returns m, or, if m is a malformed query, its header claiming one question whose
// name is a compression pointer beyond the message: Unpack fails on it.
func poison(m []byte) []byte {
	if len(m) < 12 || m[2]&0x80 != 0 || checkWire(m) == nil {
		return m
	}
	out := append(m[:4:4], 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0xff)
	return out
}
