package dns

import (
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/vigil-sidecar/vigil/proxy/table"
)

// index is the prebuilt answer data of one table snapshot. It is immutable once published:
// the query path reads it through an atomic pointer and never locks.
type index struct {
	version  uint64              // of the snapshot it was built from
	ready    bool                // the snapshot's Ready: negative answers are authoritative
	ttls     *ttls               // it was built with
	services map[string]*service // by lowercase name
	dcs      map[string]bool     // every known datacenter, lowercase
	// change is the snapshot's newest health state change; unanswered is true until a service
	// question is first answered from this index, if the change is new to it (see noteAnswer).
	change     table.Change
	unanswered atomic.Bool
}

// noteAnswer observes, at the first service answer from ix after a health state change, the time
// since the probe result that made it; otherwise it costs one atomic load.
func (s *Server) noteAnswer(ix *index) {
	if ix.unanswered.Load() && ix.unanswered.CompareAndSwap(true, false) {
		s.m.changeToAnswer.Observe(time.Since(ix.change.At).Seconds())
	}
}

// service is the prebuilt record data of one upstream, reused while its Version is unchanged.
type service struct {
	version uint64
	ttl     uint32
	served  []*rec            // the table's served instances, best priority first
	byDC    map[string][]*rec // other datacenters: the table's per-datacenter served sets
}

// rec is one instance's records in wire form, without owner names (those are compression
// pointers written per response).
type rec struct {
	prio uint16
	// prevSame is the index of the previous record of the same list with the same address
	// (-1 if none): A and AAAA answers carry each address once.
	prevSame int32
	shared   bool     // another record of the list has the same address
	kind     uint16   // mdns.TypeA, mdns.TypeAAAA, or 0 for a host-name address
	tags     []string // lowercase
	// addr is TYPE CLASS TTL RDLENGTH RDATA of the A or AAAA record (nil for a host name).
	addr []byte
	// srv is TYPE CLASS TTL RDLENGTH RDATA of the SRV record, one per domain (the target
	// name ends in the domain the question used). The target starts at srvTarget.
	srv [2][]byte
}

const srvTarget = 16 // offset of the SRV target in rec.srv

// buildIndex builds the index of snap, reusing the services of prev that did not change.
func (s *Server) buildIndex(snap *table.Snapshot, ttls *ttls, prev *index) *index {
	ix := &index{version: snap.Version, ready: snap.Ready, ttls: ttls, services: make(map[string]*service, len(snap.Upstreams)), dcs: map[string]bool{s.localDC: true}, change: snap.Change}
	// A change not answered yet from prev passes on to ix (Swap: never observed twice).
	if prev != nil && (prev.unanswered.Swap(false) || snap.Change.Seq != prev.change.Seq) {
		ix.unanswered.Store(true)
	}
	for name, u := range snap.Upstreams {
		if u.Local { // the local service's reserved upstream: not a destination
			continue
		}
		ttl := ttls.of(name)
		var svc *service
		if prev != nil {
			if old := prev.services[strings.ToLower(name)]; old != nil && old.version == u.Version && old.ttl == ttl {
				svc = old
			}
		}
		if svc == nil {
			svc = s.buildService(u, ttl)
		}
		ix.services[strings.ToLower(name)] = svc
		for dc := range svc.byDC {
			ix.dcs[dc] = true
		}
	}
	return ix
}

func (s *Server) buildService(u *table.Upstream, ttl uint32) *service {
	svc := &service{version: u.Version, ttl: ttl}
	for _, in := range u.Served {
		svc.served = append(svc.served, s.buildRec(in, ttl))
	}
	for name, d := range u.DCs {
		dc := strings.ToLower(name)
		if dc == s.localDC {
			continue
		}
		if svc.byDC == nil {
			svc.byDC = map[string][]*rec{}
		}
		recs := svc.byDC[dc] // nil: known, even with nothing served
		for _, in := range d.Served {
			recs = append(recs, s.buildRec(in, ttl))
		}
		svc.byDC[dc] = recs
	}
	linkSame(svc.served)
	for _, recs := range svc.byDC {
		linkSame(recs)
	}
	return svc
}

// linkSame sets each record's prevSame.
func linkSame(recs []*rec) {
	last := map[string]int32{}
	for i, r := range recs {
		r.prevSame = -1
		if r.addr == nil {
			continue
		}
		if j, ok := last[string(r.addr)]; ok {
			r.prevSame, r.shared, recs[j].shared = j, true, true
		}
		last[string(r.addr)] = int32(i)
	}
}

func (s *Server) buildRec(in *table.Instance, ttl uint32) *rec {
	r := &rec{prio: uint16(min(in.Priority, 0xfffe))}
	for _, t := range in.Tags {
		r.tags = append(r.tags, strings.ToLower(t))
	}
	dc := strings.ToLower(in.Datacenter)
	if dc == "" {
		dc = s.localDC
	}
	var target string // relative to the domain, or absolute for a host name
	if ip, err := netip.ParseAddr(in.Address); err == nil {
		ip = ip.Unmap()
		if ip.Is4() {
			r.kind = mdns.TypeA
		} else {
			r.kind = mdns.TypeAAAA
		}
		raw := ip.AsSlice()
		r.addr = rrHeader(nil, r.kind, ttl, len(raw))
		r.addr = append(r.addr, raw...)
		target = hex.EncodeToString(raw) + ".addr." + dc + "."
	} else {
		target = mdns.Fqdn(strings.ToLower(in.Address))
	}
	weight := min(max(in.Weight, 1), 0xffff)
	for d := 0; d < s.nDomains; d++ {
		name := target
		if r.kind != 0 {
			name += s.domains[d].name
		}
		wire := make([]byte, 256)
		n, err := mdns.PackDomainName(name, wire, 0, nil, false)
		if err != nil { // a host name that is not a domain name: point at the root
			n, wire[0] = 1, 0
		}
		b := rrHeader(nil, mdns.TypeSRV, ttl, 6+n)
		b = binary.BigEndian.AppendUint16(b, r.prio+1)
		b = binary.BigEndian.AppendUint16(b, uint16(weight))
		b = binary.BigEndian.AppendUint16(b, uint16(in.Port))
		r.srv[d] = append(b, wire[:n]...)
	}
	return r
}

// rrHeader appends TYPE, CLASS IN, TTL and RDLENGTH.
func rrHeader(b []byte, typ uint16, ttl uint32, rdlen int) []byte {
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint16(b, mdns.ClassINET)
	b = binary.BigEndian.AppendUint32(b, ttl)
	return binary.BigEndian.AppendUint16(b, uint16(rdlen))
}

// matches reports whether r is selected by tag ("" for any) for a question of type qtype.
func (r *rec) matches(tag string, qtype uint16) bool {
	switch qtype {
	case mdns.TypeA, mdns.TypeAAAA:
		if r.kind != qtype {
			return false
		}
	case mdns.TypeANY:
		if r.kind == 0 {
			return false
		}
	}
	return tag == "" || slices.Contains(r.tags, tag)
}
