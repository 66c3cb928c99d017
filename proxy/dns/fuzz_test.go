package dns_test

import (
	"net"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// recorder is a ResponseWriter that keeps what is written.
type recorder struct {
	remote net.Addr
	out    [][]byte
}

func (w *recorder) LocalAddr() net.Addr  { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (w *recorder) RemoteAddr() net.Addr { return w.remote }
func (w *recorder) WriteMsg(m *mdns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
func (w *recorder) Write(b []byte) (int, error) {
	w.out = append(w.out, append([]byte(nil), b...))
	return len(b), nil
}
func (w *recorder) Close() error        { return nil }
func (w *recorder) TsigStatus() error   { return nil }
func (w *recorder) TsigTimersOnly(bool) {}
func (w *recorder) Hijack()             {}

func seedQuery(name string, qtype uint16, size uint16) []byte {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	if size > 0 {
		m.SetEdns0(size, true)
	}
	b, _ := m.Pack()
	return b
}

// FuzzServeDNS feeds arbitrary messages to the handler: it must never panic, and must
// answer each query with one message that parses, carries its ID, and fits the transport.
// Seeds are below and in testdata/fuzz/FuzzServeDNS.
func FuzzServeDNS(f *testing.F) {
	for _, s := range []struct {
		name  string
		qtype uint16
		size  uint16
	}{
		{"web.service.consul.", mdns.TypeA, 0},
		{"WEB.service.dc1.consul.", mdns.TypeSRV, 1232},
		{"_web._tcp.service.consul.", mdns.TypeSRV, 0},
		{"v1.web.service.consul.", mdns.TypeANY, 4096},
		{"big.service.consul.", mdns.TypeSRV, 0},
		{"big.service.consul.", mdns.TypeA, 600},
		{"7f00000b.addr.dc1.consul.", mdns.TypeA, 0},
		{"nope.service.consul.", mdns.TypeAAAA, 0},
		{"consul.", mdns.TypeSOA, 0},
		{"example.org.", mdns.TypeA, 0},
		{`we\.b.service.consul.`, mdns.TypeA, 0},
	} {
		f.Add(seedQuery(s.name, s.qtype, s.size), false)
		f.Add(seedQuery(s.name, s.qtype, s.size), true)
	}
	tb := newTable(table.Config{}, basic())
	setUpstreams(tb, map[string][]inst{"big": many(300), "web": basic()["web"]})
	s, err := dns.New(dns.DefaultConfig(), tb, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, tcp bool) {
		fast, fastOK := s.AnswerWire(data)
		var req mdns.Msg
		if req.Unpack(data) != nil {
			if fastOK {
				t.Fatalf("the UDP fast path answered a message miekg/dns cannot unpack")
			}
			return // FORMERR before the handler (TestMalformed)
		}
		w := &recorder{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}}
		limit := 512
		if tcp {
			w.remote, limit = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}, 65535
		} else if opt := req.IsEdns0(); opt != nil {
			limit = max(512, min(int(opt.UDPSize()), 4096))
		}
		s.ServeDNS(w, &req)
		if len(w.out) != 1 {
			t.Fatalf("%d responses, want 1", len(w.out))
		}
		var resp mdns.Msg
		if err := resp.Unpack(w.out[0]); err != nil {
			t.Fatalf("response does not parse: %v\nrequest: %v", err, &req)
		}
		if resp.Id != req.Id || !resp.Response {
			t.Fatalf("response id %d qr %v, request id %d", resp.Id, resp.Response, req.Id)
		}
		if len(w.out[0]) > limit {
			t.Fatalf("response of %d bytes over the limit %d", len(w.out[0]), limit)
		}
		if !fastOK || tcp {
			return
		}
		// The UDP fast path must answer as ServeDNS does (but for the shuffled order).
		var fr mdns.Msg
		if err := fr.Unpack(fast); err != nil {
			t.Fatalf("fast path response does not parse: %v\nrequest: %v", err, &req)
		}
		if len(fast) > limit || fr.Id != resp.Id || fr.Rcode != resp.Rcode || fr.Truncated != resp.Truncated ||
			len(fr.Answer) != len(resp.Answer) || len(fr.Ns) != len(resp.Ns) || len(fr.Extra) != len(resp.Extra) ||
			fr.Question[0] != resp.Question[0] || fr.MsgHdr != resp.MsgHdr {
			t.Fatalf("fast path answered\n%v\nServeDNS answered\n%v", &fr, &resp)
		}
	})
}
