package dns_test

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

func TestBadQueries(t *testing.T) {
	s, _ := serve(t, dns.DefaultConfig(), newTable(table.Config{}, basic()))
	two := new(mdns.Msg)
	two.SetQuestion("web.service.consul.", mdns.TypeA)
	two.Question = append(two.Question, mdns.Question{Name: "db.service.consul.", Qtype: mdns.TypeA, Qclass: mdns.ClassINET})
	none := new(mdns.Msg)
	none.Id = mdns.Id()
	update := new(mdns.Msg)
	update.SetUpdate("consul.")
	status := new(mdns.Msg)
	status.SetQuestion("web.service.consul.", mdns.TypeA)
	status.Opcode = mdns.OpcodeStatus
	chaos := new(mdns.Msg)
	chaos.SetQuestion("version.bind.", mdns.TypeTXT)
	chaos.Question[0].Qclass = mdns.ClassCHAOS
	badvers := new(mdns.Msg)
	badvers.SetQuestion("web.service.consul.", mdns.TypeA)
	badvers.SetEdns0(1232, false)
	badvers.IsEdns0().SetVersion(1)
	outside := new(mdns.Msg)
	outside.SetQuestion("example.org.", mdns.TypeA)
	escaped := new(mdns.Msg) // one label "service.consul" under "web": not vigil's domain
	escaped.SetQuestion(`web.service\.consul.`, mdns.TypeA)
	for _, nt := range nets {
		t.Run(nt, func(t *testing.T) {
			for _, c := range []struct {
				name  string
				m     *mdns.Msg
				rcode int
			}{
				{"two questions", two, mdns.RcodeFormatError},
				{"no question", none, mdns.RcodeFormatError},
				{"update", update, mdns.RcodeNotImplemented},
				{"status", status, mdns.RcodeNotImplemented},
				{"chaos class", chaos, mdns.RcodeRefused},
				{"edns version 1", badvers, mdns.RcodeBadVers},
				{"outside, no recursors", outside, mdns.RcodeRefused},
				{"escaped dot: outside", escaped, mdns.RcodeRefused},
			} {
				m := c.m.Copy()
				m.Id = mdns.Id()
				c2 := &mdns.Client{Net: nt, Timeout: 3 * time.Second}
				r, _, err := c2.Exchange(m, s.Addr())
				if err != nil {
					t.Fatalf("%s: %v", c.name, err)
				}
				if r.Rcode != c.rcode || r.Id != m.Id || len(r.Answer) != 0 {
					t.Errorf("%s: got %s id %d, want %s id %d, no answer", c.name, mdns.RcodeToString[r.Rcode], r.Id, mdns.RcodeToString[c.rcode], m.Id)
				}
			}
		})
	}
}

// TestMalformed sends bytes that are not a DNS message: FORMERR when the header can be read,
// and the server keeps answering.
func TestMalformed(t *testing.T) {
	s, _ := serve(t, dns.DefaultConfig(), newTable(table.Config{}, basic()))
	// A header claiming one question, then garbage.
	bad := []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff}
	for _, nt := range nets {
		t.Run(nt, func(t *testing.T) {
			reply := exchangeRaw(t, nt, s.Addr(), bad)
			var r mdns.Msg
			if err := r.Unpack(reply); err != nil {
				t.Fatalf("reply does not parse: %v", err)
			}
			if r.Id != 0x1234 || r.Rcode != mdns.RcodeFormatError {
				t.Errorf("got id %x rcode %s, want 1234 FORMERR", r.Id, mdns.RcodeToString[r.Rcode])
			}
			wantRcode(t, ask(t, nt, s.Addr(), "web.service.consul.", mdns.TypeA), 0)
		})
	}
}

// recursor starts a fake recursive server on loopback that answers every A question with 192.0.2.1.
func recursor(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		t.Skipf("tcp twin of %s taken: %v", pc.LocalAddr(), err)
	}
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		m.RecursionAvailable = true
		rr, _ := mdns.NewRR(r.Question[0].Name + " 60 IN A 192.0.2.1")
		m.Answer = append(m.Answer, rr)
		w.WriteMsg(m)
	})
	for _, srv := range []*mdns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() { srv.ActivateAndServe(); close(done) }()
		<-started
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.ShutdownContext(ctx)
			<-done
		})
	}
	return pc.LocalAddr().String()
}

func TestForwarding(t *testing.T) {
	good := recursor(t)
	dead := "127.0.0.1:" + itoa(testutil.ClosedPort(t)) // nothing answers: tcp is refused, udp times out
	cfg := dns.DefaultConfig()
	cfg.Recursors = []string{dead, good}
	cfg.RecursorTimeout = 300 * time.Millisecond
	s, reg := serve(t, cfg, newTable(table.Config{}, basic()))

	denied := cfg
	denied.AllowRecursion = []string{"10.0.0.0/8"}
	sd, _ := serve(t, denied, newTable(table.Config{}, basic()))
	for _, nt := range nets {
		t.Run(nt, func(t *testing.T) {
			r := ask(t, nt, s.Addr(), "Example.ORG.", mdns.TypeA)
			wantRcode(t, r, 0)
			if got := ips(r.Answer); len(got) != 1 || got[0] != "192.0.2.1" || r.Answer[0].Header().Ttl != 60 {
				t.Errorf("forwarded answer %v, want the recursor's 192.0.2.1 with ttl 60", r.Answer)
			}
			if !r.RecursionAvailable {
				t.Error("RA not set for a client allowed to recurse")
			}
			// Names in vigil's domain are never forwarded.
			wantRcode(t, ask(t, nt, s.Addr(), "nope.service.consul.", mdns.TypeA), mdns.RcodeNameError)
			// A client outside allow_recursion is refused.
			wantRcode(t, ask(t, nt, sd.Addr(), "example.org.", mdns.TypeA), mdns.RcodeRefused)
		})
	}
	if counter(t, reg, "vigil_dns_forwarded_total") != 2 || counter(t, reg, "vigil_dns_forward_errors_total") != 2 {
		t.Errorf("forwarded %v, errors %v: want 2 and 2 (the dead recursor, once per net)",
			counter(t, reg, "vigil_dns_forwarded_total"), counter(t, reg, "vigil_dns_forward_errors_total"))
	}
}

func TestForwardAllFail(t *testing.T) {
	cfg := dns.DefaultConfig()
	cfg.Recursors = []string{"127.0.0.1:" + itoa(testutil.ClosedPort(t))}
	cfg.RecursorTimeout = 200 * time.Millisecond
	s, _ := serve(t, cfg, newTable(table.Config{}, basic()))
	for _, nt := range nets {
		wantRcode(t, ask(t, nt, s.Addr(), "example.org.", mdns.TypeA), mdns.RcodeServerFailure)
		r := ask(t, nt, s.Addr(), "example.org.", mdns.TypeA, edns(1232))
		wantRcode(t, r, mdns.RcodeServerFailure)
		if r.IsEdns0() == nil {
			t.Errorf("%s: SERVFAIL to an EDNS query without an OPT record (RFC 6891 section 7)", nt)
		}
	}
}

// TestMetrics checks the exposition with promtool.
func TestMetrics(t *testing.T) {
	testutil.Need(t, "promtool")
	s, reg := serve(t, dns.DefaultConfig(), newTable(table.Config{}, basic()))
	ask(t, "udp", s.Addr(), "web.service.consul.", mdns.TypeA)
	ask(t, "tcp", s.Addr(), "nope.service.consul.", mdns.TypeSRV)
	// A query is counted just after its answer is written: wait for the count, not a time.
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() bool {
		return counter(t, reg, "vigil_dns_queries_total") == 2
	}, "vigil_dns_queries_total = 2")
	expo := testutil.Exposition(t, reg)
	for _, want := range []string{`vigil_dns_queries_total{qtype="A",rcode="NOERROR"} 1`, `vigil_dns_queries_total{qtype="SRV",rcode="NXDOMAIN"} 1`, "vigil_dns_request_duration_seconds_bucket"} {
		if !strings.Contains(expo, want) {
			t.Errorf("exposition lacks %s", want)
		}
	}
	testutil.CheckMetrics(t, expo)
	// A second server on the same registry is an error, not a panic.
	if _, err := dns.New(dns.DefaultConfig(), newTable(table.Config{}, nil), prometheus.Registerer(reg), nil); err == nil {
		t.Error("registering twice: no error")
	}
}

// TestWireSize checks on the raw bytes that answers are compressed (each owner name a pointer
// to the question) and that the OPT record echoes the DO bit.
func TestWireSize(t *testing.T) {
	s, _ := serve(t, dns.DefaultConfig(), newTable(table.Config{}, basic()))
	q := new(mdns.Msg)
	q.SetQuestion("web.service.consul.", mdns.TypeA)
	q.SetEdns0(1232, true)
	pkt, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	// header + question (20-byte name, type, class) + 2 A records (pointer, 10, 4) + OPT (11)
	want := 12 + 20 + 4 + 2*16 + 11
	for _, nt := range nets {
		t.Run(nt, func(t *testing.T) {
			reply := exchangeRaw(t, nt, s.Addr(), pkt)
			if len(reply) != want {
				t.Errorf("response of %d bytes, want %d (compressed)", len(reply), want)
			}
			var r mdns.Msg
			if err := r.Unpack(reply); err != nil {
				t.Fatal(err)
			}
			if opt := r.IsEdns0(); opt == nil || !opt.Do() {
				t.Errorf("OPT %v: want the DO bit echoed", opt)
			}
		})
	}
}

// TestMiekgUDP covers UDP served by miekg/dns's server, as on a wildcard listen address.
func TestMiekgUDP(t *testing.T) {
	good := recursor(t)
	cfg := dns.DefaultConfig()
	cfg.Recursors = []string{good}
	ups := basic()
	ups["big"] = many(100)
	s, _ := serve(t, cfg, newTable(table.Config{}, ups), (*dns.Server).UseMiekgUDP)
	if got := ips(ask(t, "udp", s.Addr(), "v1.web.service.consul.", mdns.TypeA).Answer); len(got) != 1 || got[0] != "127.0.0.11" {
		t.Errorf("A: %v", got)
	}
	if r := ask(t, "udp", s.Addr(), "big.service.consul.", mdns.TypeSRV); !r.Truncated || len(r.Answer) == 0 || len(r.Extra) < len(r.Answer) {
		t.Errorf("big SRV: tc=%v %d answers %d additional", r.Truncated, len(r.Answer), len(r.Extra))
	}
	wantRcode(t, ask(t, "udp", s.Addr(), "nope.service.consul.", mdns.TypeA), mdns.RcodeNameError)
	if got := ips(ask(t, "udp", s.Addr(), "example.org.", mdns.TypeA).Answer); len(got) != 1 || got[0] != "192.0.2.1" {
		t.Errorf("forwarded: %v", got)
	}
}

// exchangeRaw sends msg as it is over nt (with TCP's length prefix) and returns the raw reply.
func exchangeRaw(t *testing.T, nt, addr string, msg []byte) []byte {
	t.Helper()
	conn, err := net.Dial(nt, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if nt == "tcp" {
		msg = append([]byte{byte(len(msg) >> 8), byte(len(msg))}, msg...)
	}
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	if nt == "udp" {
		buf := make([]byte, mdns.MaxMsgSize)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return buf[:n]
	}
	var l [2]byte
	if _, err := io.ReadFull(conn, l[:]); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, int(l[0])<<8|int(l[1]))
	if _, err := io.ReadFull(conn, reply); err != nil {
		t.Fatal(err)
	}
	return reply
}
