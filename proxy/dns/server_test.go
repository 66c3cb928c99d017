package dns_test

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

func basic() map[string][]inst {
	return map[string][]inst{
		"web": {
			up("w1", "127.0.0.11", 8081, health.Healthy, tags("v1", "Primary")),
			up("w2", "127.0.0.12", 8082, health.Healthy, tags("v2")),
			up("w3", "127.0.0.13", 8083, health.Unhealthy, tags("v1")),
		},
		"v6":   {up("a", "::1", 9000, health.Healthy), up("b", "2001:db8::2", 9001, health.Healthy)},
		"down": {up("d1", "127.0.0.21", 1, health.Unhealthy)},
		"far": {
			up("f1", "127.0.0.31", 31, health.Healthy),
			up("f2", "127.0.0.32", 32, health.Healthy, dc("dc2", 1)),
			up("f3", "127.0.0.33", 33, health.Unhealthy, dc("dc2", 1)),
		},
	}
}

func TestAnswers(t *testing.T) {
	cfg := dns.DefaultConfig()
	cfg.AltDomain = "vigil.internal."
	cfg.TTLs = map[string]time.Duration{"web": 7 * time.Second}
	s, _ := serve(t, cfg, newTable(table.Config{}, basic()))
	cases := []struct {
		name  string
		qtype uint16
		want  []string // sorted addresses; nil for a negative answer
		rcode int
	}{
		{"web.service.consul.", mdns.TypeA, []string{"127.0.0.11", "127.0.0.12"}, 0},
		{"WeB.SeRvIcE.CoNsUl.", mdns.TypeA, []string{"127.0.0.11", "127.0.0.12"}, 0},
		{"web.service.dc1.consul.", mdns.TypeA, []string{"127.0.0.11", "127.0.0.12"}, 0},
		{"web.service.vigil.internal.", mdns.TypeA, []string{"127.0.0.11", "127.0.0.12"}, 0},
		{"v1.web.service.consul.", mdns.TypeA, []string{"127.0.0.11"}, 0},
		{"primary.web.service.consul.", mdns.TypeA, []string{"127.0.0.11"}, 0},
		{"v2.web.service.consul.", mdns.TypeA, []string{"127.0.0.12"}, 0},
		{"v3.web.service.consul.", mdns.TypeA, nil, mdns.RcodeNameError},
		{"web.service.consul.", mdns.TypeAAAA, nil, 0},
		{"web.service.consul.", mdns.TypeTXT, nil, 0},
		{"web.service.consul.", mdns.TypeANY, []string{"127.0.0.11", "127.0.0.12"}, 0},
		{"web.service.consul.", mdns.TypeSRV, []string{"7f00000b.addr.dc1.consul.:8081", "7f00000c.addr.dc1.consul.:8082"}, 0},
		{"web.service.vigil.internal.", mdns.TypeSRV, []string{"7f00000b.addr.dc1.vigil.internal.:8081", "7f00000c.addr.dc1.vigil.internal.:8082"}, 0},
		{"_web._tcp.service.consul.", mdns.TypeSRV, []string{"7f00000b.addr.dc1.consul.:8081", "7f00000c.addr.dc1.consul.:8082"}, 0},
		{"_web._v2.service.consul.", mdns.TypeSRV, []string{"7f00000c.addr.dc1.consul.:8082"}, 0},
		{"7f00000b.addr.dc1.consul.", mdns.TypeA, []string{"127.0.0.11"}, 0},
		{"7f00000b.addr.dc1.consul.", mdns.TypeAAAA, nil, 0},
		{"zz00000b.addr.dc1.consul.", mdns.TypeA, nil, mdns.RcodeNameError},
		{"v6.service.consul.", mdns.TypeAAAA, []string{"2001:db8::2", "::1"}, 0},
		{"v6.service.consul.", mdns.TypeA, nil, 0},
		{"v6.service.consul.", mdns.TypeSRV, []string{"00000000000000000000000000000001.addr.dc1.consul.:9000", "20010db8000000000000000000000002.addr.dc1.consul.:9001"}, 0},
		{"20010db8000000000000000000000002.addr.dc1.consul.", mdns.TypeAAAA, []string{"2001:db8::2"}, 0},
		{"nope.service.consul.", mdns.TypeA, nil, mdns.RcodeNameError},
		{"down.service.consul.", mdns.TypeA, nil, mdns.RcodeNameError},
		{"web.service.dc9.consul.", mdns.TypeA, nil, mdns.RcodeNameError},
		{"far.service.consul.", mdns.TypeA, []string{"127.0.0.31"}, 0},
		{"far.service.dc2.consul.", mdns.TypeA, []string{"127.0.0.32"}, 0},
		{"far.service.dc2.consul.", mdns.TypeSRV, []string{"7f000020.addr.dc2.consul.:32"}, 0},
		{"web.node.consul.", mdns.TypeA, nil, mdns.RcodeNameError},
		{"a.b.c.d.e.f.consul.", mdns.TypeA, nil, mdns.RcodeNameError},
		{"consul.", mdns.TypeA, nil, 0},
	}
	for _, nt := range nets {
		t.Run(nt, func(t *testing.T) {
			for _, c := range cases {
				r := ask(t, nt, s.Addr(), c.name, c.qtype)
				wantRcode(t, r, c.rcode)
				if !r.Authoritative || !r.Response || r.Truncated {
					t.Errorf("%s: flags aa=%v qr=%v tc=%v", c.name, r.Authoritative, r.Response, r.Truncated)
				}
				if r.Question[0].Name != c.name {
					t.Errorf("question %q, want it echoed as %q", r.Question[0].Name, c.name)
				}
				if c.want == nil {
					domain := "consul."
					if strings.HasSuffix(c.name, "vigil.internal.") {
						domain = "vigil.internal."
					}
					wantSOA(t, r, domain, 5)
					continue
				}
				got := ips(r.Answer)
				slices.Sort(got)
				if !slices.Equal(got, c.want) {
					t.Errorf("%s %s: got %v, want %v", c.name, mdns.TypeToString[c.qtype], got, c.want)
				}
				for _, rr := range r.Answer {
					wantTTL := uint32(5)
					if strings.Contains(strings.ToLower(c.name), "web") {
						wantTTL = 7
					}
					if rr.Header().Name != c.name || rr.Header().Ttl != wantTTL && !strings.Contains(c.name, "addr") {
						t.Errorf("%s: record %v: want owner %s and ttl %d", c.name, rr, c.name, wantTTL)
					}
				}
			}
		})
	}
}

func TestSRVAdditional(t *testing.T) {
	s, _ := serve(t, dns.DefaultConfig(), newTable(table.Config{}, basic()))
	for _, nt := range nets {
		t.Run(nt, func(t *testing.T) {
			r := ask(t, nt, s.Addr(), "web.service.consul.", mdns.TypeSRV)
			if len(r.Answer) != 2 || len(r.Extra) != 2 {
				t.Fatalf("want 2 SRV and 2 additional A, got\n%v", r)
			}
			glue := map[string]string{}
			for _, rr := range r.Extra {
				a := rr.(*mdns.A)
				glue[a.Hdr.Name] = a.A.String()
			}
			for _, rr := range r.Answer {
				srv := rr.(*mdns.SRV)
				if srv.Priority != 1 || srv.Weight != 1 {
					t.Errorf("SRV %v: want priority 1 weight 1", srv)
				}
				ip, ok := glue[srv.Target]
				if !ok {
					t.Fatalf("no additional record for %s", srv.Target)
				}
				// The target resolves on its own, to the same address.
				a := ask(t, nt, s.Addr(), strings.ToUpper(srv.Target), mdns.TypeA)
				if got := ips(a.Answer); len(got) != 1 || got[0] != ip {
					t.Errorf("%s resolves to %v, want %s", srv.Target, got, ip)
				}
			}
		})
	}
}

func TestNegative(t *testing.T) {
	cfg := dns.DefaultConfig()
	cfg.NegativeTTL = 3 * time.Second
	s, _ := serve(t, cfg, newTable(table.Config{}, basic()))
	for _, nt := range nets {
		t.Run(nt, func(t *testing.T) {
			r := ask(t, nt, s.Addr(), "nothing.service.consul.", mdns.TypeA, edns(1232))
			wantRcode(t, r, mdns.RcodeNameError)
			wantSOA(t, r, "consul.", 3)
			if r.IsEdns0() == nil {
				t.Error("EDNS0 query answered without OPT")
			}
			r = ask(t, nt, s.Addr(), "web.service.consul.", mdns.TypeMX)
			wantRcode(t, r, mdns.RcodeSuccess)
			wantSOA(t, r, "consul.", 3)
			r = ask(t, nt, s.Addr(), "consul.", mdns.TypeSOA)
			if len(r.Answer) != 1 || r.Answer[0].(*mdns.SOA).Ns != "ns.consul." {
				t.Errorf("apex SOA: %v", r)
			}
		})
	}
}

// many returns n healthy instances of one upstream on 127.0.1.x.
func many(n int, mods ...func(*discovery.Instance)) []inst {
	var out []inst
	for i := range n {
		out = append(out, up("i"+itoa(i), "127.0."+itoa(1+i/250)+"."+itoa(1+i%250), 10000+i, health.Healthy, mods...))
	}
	return out
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestTruncation(t *testing.T) {
	s, reg := serve(t, dns.DefaultConfig(), newTable(table.Config{}, map[string][]inst{"big": many(100)}))
	for _, nt := range nets {
		t.Run(nt, func(t *testing.T) {
			for _, c := range []struct {
				qtype uint16
				edns  uint16 // 0: none
			}{{mdns.TypeA, 0}, {mdns.TypeA, 1232}, {mdns.TypeSRV, 0}, {mdns.TypeSRV, 1232}, {mdns.TypeSRV, 4096}, {mdns.TypeANY, 0}} {
				var mods []func(*mdns.Msg)
				limit := 512
				if c.edns != 0 {
					mods, limit = append(mods, edns(c.edns)), int(c.edns)
				}
				r := ask(t, nt, s.Addr(), "big.service.consul.", c.qtype, mods...)
				wantRcode(t, r, 0)
				if nt == "tcp" {
					if r.Truncated || len(r.Answer) != 100 {
						t.Errorf("tcp %s: tc=%v with %d answers, want all 100", mdns.TypeToString[c.qtype], r.Truncated, len(r.Answer))
					}
					continue
				}
				r.Compress = true
				size := r.Len()
				if !r.Truncated || len(r.Answer) == 0 || size > limit {
					t.Errorf("udp %s edns %d: tc=%v, %d answers, %d bytes: want TC and a full message of at most %d bytes",
						mdns.TypeToString[c.qtype], c.edns, r.Truncated, len(r.Answer), size, limit)
				}
				if c.qtype == mdns.TypeSRV && len(r.Extra) < len(r.Answer) {
					t.Errorf("udp SRV: %d answers but %d additional records: each SRV needs its address", len(r.Answer), len(r.Extra))
				}
				// The next record would not have fitted: truncation is not premature.
				if c.qtype == mdns.TypeA && size+16 <= limit {
					t.Errorf("udp A edns %d: %d bytes, room left for another record", c.edns, size)
				}
			}
		})
	}
	if got := counter(t, reg, "vigil_dns_truncated_total"); got == 0 {
		t.Error("vigil_dns_truncated_total not counted")
	}
}

func TestAnswerLimit(t *testing.T) {
	cfg := dns.DefaultConfig()
	cfg.AnswerLimit = 3
	s, _ := serve(t, cfg, newTable(table.Config{}, map[string][]inst{"big": many(10)}))
	for _, nt := range nets {
		t.Run(nt, func(t *testing.T) {
			for _, qt := range []uint16{mdns.TypeA, mdns.TypeSRV} {
				r := ask(t, nt, s.Addr(), "big.service.consul.", qt)
				if len(r.Answer) != 3 || r.Truncated {
					t.Errorf("%s: %d answers tc=%v, want 3 without TC", mdns.TypeToString[qt], len(r.Answer), r.Truncated)
				}
			}
		})
	}
}

func TestPanicMode(t *testing.T) {
	p := table.DefaultPolicy()
	p.PanicThreshold = 50
	tb := newTable(table.Config{Default: p}, map[string][]inst{"api": {
		up("a1", "127.0.0.41", 1, health.Healthy),
		up("a2", "127.0.0.42", 2, health.Unhealthy),
		up("a3", "127.0.0.43", 3, health.Unhealthy),
		up("a4", "127.0.0.44", 4, health.Unhealthy),
	}})
	s, _ := serve(t, dns.DefaultConfig(), tb)
	for _, nt := range nets {
		t.Run(nt, func(t *testing.T) {
			r := ask(t, nt, s.Addr(), "api.service.consul.", mdns.TypeA)
			if len(r.Answer) != 4 {
				t.Errorf("in panic (1 of 4 healthy, threshold 50%%) fail-open serves all 4, got %v", ips(r.Answer))
			}
		})
	}
}

func TestZoneOrder(t *testing.T) {
	p := table.DefaultPolicy()
	p.ZonePreference = true
	ins := append(many(4, zone("zone-b")), up("local1", "127.0.2.1", 1, health.Healthy, zone("zone-a")),
		up("local2", "127.0.2.2", 2, health.Healthy, zone("zone-a")))
	s, _ := serve(t, dns.DefaultConfig(), newTable(table.Config{Zone: "zone-a", Default: p}, map[string][]inst{"web": ins}))
	for _, nt := range nets {
		t.Run(nt, func(t *testing.T) {
			firsts := map[string]bool{}
			orders := map[string]bool{}
			for range 50 {
				r := ask(t, nt, s.Addr(), "web.service.consul.", mdns.TypeA)
				got := ips(r.Answer)
				if len(got) != 6 {
					t.Fatalf("got %v, want all 6", got)
				}
				for _, ip := range got[:2] {
					if !strings.HasPrefix(ip, "127.0.2.") {
						t.Fatalf("order %v: same-zone instances must come first", got)
					}
				}
				firsts[got[0]] = true
				orders[strings.Join(got[2:], ",")] = true
			}
			if len(firsts) != 2 || len(orders) < 2 {
				t.Errorf("no shuffling within priority groups: firsts %v, %d orders of the rest", firsts, len(orders))
			}
			r := ask(t, nt, s.Addr(), "web.service.consul.", mdns.TypeSRV)
			for _, rr := range r.Answer {
				srv := rr.(*mdns.SRV)
				local := strings.HasPrefix(srv.Target, "7f0002")
				if local && srv.Priority != 1 || !local && srv.Priority != 2 {
					t.Errorf("SRV %v: same zone priority 1, others 2", srv)
				}
			}
		})
	}
}

func TestFollowsTable(t *testing.T) {
	tb := newTable(table.Config{}, basic())
	s, _ := serve(t, dns.DefaultConfig(), tb)
	tb.SetStatus(discovery.Key{Upstream: "web", ID: "w1"}, health.Status{State: health.Unhealthy})
	has := func(ip string) bool {
		return slices.Contains(ips(ask(t, "udp", s.Addr(), "web.service.consul.", mdns.TypeA).Answer), ip)
	}
	testutil.Eventually(t, 2*time.Second, 5*time.Millisecond, func() bool { return !has("127.0.0.11") }, "w1 still answered after it became unhealthy")
	tb.SetStatus(discovery.Key{Upstream: "web", ID: "w1"}, health.Status{State: health.Healthy})
	testutil.Eventually(t, 2*time.Second, 5*time.Millisecond, func() bool { return has("127.0.0.11") }, "w1 not answered after it recovered")
}

func TestSetTTLs(t *testing.T) {
	s, _ := serve(t, dns.DefaultConfig(), newTable(table.Config{}, basic()))
	s.SetTTLs(30*time.Second, map[string]time.Duration{"web": time.Minute})
	ttl := func(name string) uint32 {
		r := ask(t, "udp", s.Addr(), name, mdns.TypeA)
		if len(r.Answer) == 0 {
			t.Fatalf("%s: no answer", name)
		}
		return r.Answer[0].Header().Ttl
	}
	testutil.Eventually(t, 2*time.Second, 5*time.Millisecond, func() bool {
		return ttl("web.service.consul.") == 60 && ttl("far.service.consul.") == 30
	}, "TTLs not applied")
}

// TestSameAddress: instances sharing an address (different ports) give one A record, and
// one SRV record each.
func TestSameAddress(t *testing.T) {
	s, _ := serve(t, dns.DefaultConfig(), newTable(table.Config{}, map[string][]inst{"web": {
		up("a", "127.0.0.1", 1, health.Healthy, tags("x")),
		up("b", "127.0.0.1", 2, health.Healthy),
		up("c", "127.0.0.1", 3, health.Healthy, tags("x")),
		up("d", "127.0.0.2", 4, health.Healthy),
	}}))
	for _, nt := range nets {
		t.Run(nt, func(t *testing.T) {
			for _, c := range []struct {
				name  string
				qtype uint16
				want  int
			}{
				{"web.service.consul.", mdns.TypeA, 2},
				{"x.web.service.consul.", mdns.TypeA, 1},
				{"web.service.consul.", mdns.TypeSRV, 4},
				{"x.web.service.consul.", mdns.TypeSRV, 2},
			} {
				r := ask(t, nt, s.Addr(), c.name, c.qtype)
				if got := ips(r.Answer); len(got) != c.want {
					t.Errorf("%s %s: %v, want %d records", c.name, mdns.TypeToString[c.qtype], got, c.want)
				}
				if c.qtype == mdns.TypeSRV && len(r.Extra) != c.want/2 {
					t.Errorf("%s SRV: additional %v, want each address once", c.name, r.Extra)
				}
			}
		})
	}
}

// TestNotReady: until the table is ready (discovery synced, every instance probed once), a
// service without served instances gets SERVFAIL, not a negative answer clients would cache.
func TestNotReady(t *testing.T) {
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	mem := discovery.Membership{Upstreams: map[string]*discovery.Upstream{"web": {Name: "web", Instances: []discovery.Instance{
		{ID: "a", Address: "127.0.0.1", Port: 1}, {ID: "b", Address: "127.0.0.2", Port: 2},
	}}}, Ready: true}
	tb.SetMembership(mem, map[discovery.Key]health.Status{{Upstream: "web", ID: "a"}: {State: health.Healthy}})
	s, _ := serve(t, dns.DefaultConfig(), tb)
	for _, nt := range nets {
		t.Run(nt, func(t *testing.T) {
			wantRcode(t, ask(t, nt, s.Addr(), "web.service.consul.", mdns.TypeA), mdns.RcodeSuccess)
			wantRcode(t, ask(t, nt, s.Addr(), "v9.web.service.consul.", mdns.TypeA), mdns.RcodeServerFailure)
			wantRcode(t, ask(t, nt, s.Addr(), "nope.service.consul.", mdns.TypeA), mdns.RcodeServerFailure)
			wantRcode(t, ask(t, nt, s.Addr(), "nope.node.consul.", mdns.TypeA), mdns.RcodeNameError)
		})
	}
	tb.SetStatus(discovery.Key{Upstream: "web", ID: "b"}, health.Status{State: health.Unhealthy})
	testutil.Eventually(t, 2*time.Second, 5*time.Millisecond, func() bool {
		return ask(t, "udp", s.Addr(), "nope.service.consul.", mdns.TypeA).Rcode == mdns.RcodeNameError
	}, "NXDOMAIN once the table is ready")
}

// TestLargeSRVOverTCP: past 16 KiB the additional records can no longer point at their SRV
// targets and spell them out; the sizing must count that, or the message outgrows 64 KiB and
// nothing is sent.
func TestLargeSRVOverTCP(t *testing.T) {
	s, _ := serve(t, dns.DefaultConfig(), newTable(table.Config{}, map[string][]inst{"huge": many(1500)}))
	r := ask(t, "tcp", s.Addr(), "huge.service.consul.", mdns.TypeSRV)
	wantRcode(t, r, 0)
	r.Compress = true
	if n := r.Len(); n > mdns.MaxMsgSize || len(r.Answer) < 400 || len(r.Extra) < len(r.Answer) {
		t.Errorf("%d answers, %d additional, %d bytes: want hundreds of SRV records with their addresses within 64 KiB",
			len(r.Answer), len(r.Extra), n)
	}
	t.Logf("%d SRV records, %d bytes, tc=%v", len(r.Answer), r.Len(), r.Truncated)
}
