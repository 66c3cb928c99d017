package dns_test

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// TestFormErr: messages that miekg/dns unpacks without complaint but that are malformed get
// FORMERR with their ID, over UDP (fast path, slow path, miekg/dns's server) and TCP, and
// the server keeps answering (RFC 6891 §6.1.1: two OPT records are FORMERR).
func TestFormErr(t *testing.T) {
	pack := func(m *mdns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	q := new(mdns.Msg)
	q.SetQuestion("web.service.consul.", mdns.TypeA)
	q.Id = 0x1234
	plain := pack(q)
	twoOPT := q.Copy()
	twoOPT.SetEdns0(1232, false)
	twoOPT.Extra = append(twoOPT.Extra, twoOPT.Extra[0])
	optInAnswer := q.Copy()
	optInAnswer.SetEdns0(1232, false)
	optInAnswer.Answer, optInAnswer.Extra = optInAnswer.Extra, nil
	moreAnswers := append([]byte(nil), plain...) // claims an answer record it lacks
	binary.BigEndian.PutUint16(moreAnswers[6:], 1)
	moreExtra := pack(func() *mdns.Msg { m := q.Copy(); m.SetEdns0(1232, false); return m }())
	binary.BigEndian.PutUint16(moreExtra[10:], 2) // one OPT there, two claimed
	outside := new(mdns.Msg)
	outside.SetQuestion("example.org.", mdns.TypeA)
	outside.Id = 0x1234
	cases := []struct {
		name string
		pkt  []byte
	}{
		{"two OPT records", pack(twoOPT)},
		{"OPT in the answer section", pack(optInAnswer)},
		{"header claims an answer", moreAnswers},
		{"header claims two additional", moreExtra},
		{"trailing garbage", append(append([]byte(nil), plain...), 0xde, 0xad)},
		{"trailing garbage, outside the domain", append(pack(outside), 0)},
		{"two questions claimed, one sent", func() []byte { b := append([]byte(nil), plain...); b[5] = 2; return b }()},
	}
	for _, miekg := range []bool{false, true} {
		var opts []func(*dns.Server)
		if miekg {
			opts = append(opts, (*dns.Server).UseMiekgUDP)
		}
		s, _ := serve(t, dns.DefaultConfig(), newTable(table.Config{}, basic()), opts...)
		for _, nt := range nets {
			for _, c := range cases {
				reply := exchangeRaw(t, nt, s.Addr(), c.pkt)
				var r mdns.Msg
				if err := r.Unpack(reply); err != nil {
					t.Fatalf("%s (%s, miekg udp %v): reply does not parse: %v", c.name, nt, miekg, err)
				}
				if r.Id != 0x1234 || r.Rcode != mdns.RcodeFormatError || len(r.Answer) != 0 {
					t.Errorf("%s (%s, miekg udp %v): id %x rcode %s %d answers, want 1234 FORMERR", c.name, nt, miekg, r.Id, mdns.RcodeToString[r.Rcode], len(r.Answer))
				}
			}
			wantRcode(t, ask(t, nt, s.Addr(), "web.service.consul.", mdns.TypeA), 0)
		}
	}
}

// TestBadVersMetric: an EDNS version 1 query is counted as rcode BADVERS (it was BADSIG, the
// other name of 16).
func TestBadVersMetric(t *testing.T) {
	s, reg := serve(t, dns.DefaultConfig(), newTable(table.Config{}, basic()))
	for _, nt := range nets {
		m := new(mdns.Msg)
		m.SetQuestion("web.service.consul.", mdns.TypeA)
		m.SetEdns0(1232, false)
		m.IsEdns0().SetVersion(1)
		wantRcode(t, exchange(t, nt, s.Addr(), m), mdns.RcodeBadVers)
	}
	// A query is counted just after its answer is written: wait for the count.
	var expo string
	testutil.Eventually(t, 10*time.Second, 5*time.Millisecond, func() bool {
		expo = testutil.Exposition(t, reg)
		return strings.Contains(expo, `vigil_dns_queries_total{qtype="A",rcode="BADVERS"} 2`)
	}, "BADVERS counted twice")
	if strings.Contains(expo, "BADSIG") {
		t.Errorf("BADVERS not counted as such:\n%s", grepLines(expo, "vigil_dns_queries_total"))
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
