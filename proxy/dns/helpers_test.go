package dns_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/internal/testutil"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/dns"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

func TestMain(m *testing.M) {
	if addr := os.Getenv(benchServeEnv); addr != "" {
		os.Exit(benchServe(addr))
	}
	goleak.VerifyTestMain(m)
}

var nets = []string{"udp", "tcp"}

// inst is a test instance: its state is set through the table.
type inst struct {
	discovery.Instance
	state health.State
}

func up(id, addr string, port int, st health.State, mods ...func(*discovery.Instance)) inst {
	in := inst{Instance: discovery.Instance{ID: id, Address: addr, Port: port, Weight: 1}, state: st}
	for _, m := range mods {
		m(&in.Instance)
	}
	return in
}

func zone(z string) func(*discovery.Instance)    { return func(i *discovery.Instance) { i.Zone = z } }
func tags(t ...string) func(*discovery.Instance) { return func(i *discovery.Instance) { i.Tags = t } }
func dc(d string, failover int) func(*discovery.Instance) {
	return func(i *discovery.Instance) { i.Datacenter, i.Failover = d, failover }
}

// newTable returns a table holding the given upstreams.
func newTable(tc table.Config, ups map[string][]inst) *table.Table {
	if tc.Default.PanicMode == "" {
		tc.Default = table.DefaultPolicy()
	}
	t := table.New(tc)
	setUpstreams(t, ups)
	return t
}

func setUpstreams(t *table.Table, ups map[string][]inst) {
	mem := discovery.Membership{Upstreams: map[string]*discovery.Upstream{}, Ready: true}
	st := map[discovery.Key]health.Status{}
	for name, ins := range ups {
		u := &discovery.Upstream{Name: name}
		for _, in := range ins {
			u.Instances = append(u.Instances, in.Instance)
			st[discovery.Key{Upstream: name, ID: in.ID}] = health.Status{State: in.state, Stats: &health.Stats{}}
		}
		mem.Upstreams[name] = u
	}
	t.SetMembership(mem, st)
}

// serve starts a Server on 127.0.0.1:0 (Addr reports the bound port) and stops it when the test ends.
func serve(t testing.TB, cfg dns.Config, tb *table.Table, opts ...func(*dns.Server)) (*dns.Server, *prometheus.Registry) {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	reg := prometheus.NewRegistry()
	s, err := dns.New(cfg, tb, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range opts {
		o(s)
	}
	run := testutil.Run(t, s, 10*time.Second)
	select {
	case <-s.Ready():
	case <-run.Done():
		t.Fatalf("Run: %v", run.Err())
	case <-time.After(5 * time.Second):
		t.Fatal("server not ready")
	}
	return s, reg
}

// ask sends one question over network nt and returns the response.
func ask(t testing.TB, nt, addr, name string, qtype uint16, mods ...func(*mdns.Msg)) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	for _, f := range mods {
		f(m)
	}
	return exchange(t, nt, addr, m)
}

func exchange(t testing.TB, nt, addr string, m *mdns.Msg) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: nt, Timeout: 3 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", nt, m.Question[0].Name, mdns.TypeToString[m.Question[0].Qtype], err)
	}
	if r.Id != m.Id {
		t.Fatalf("id %d, want %d", r.Id, m.Id)
	}
	return r
}

func edns(size uint16) func(*mdns.Msg) { return func(m *mdns.Msg) { m.SetEdns0(size, false) } }

// ips returns the addresses in the records, in order.
func ips(rrs []mdns.RR) []string {
	var out []string
	for _, rr := range rrs {
		switch r := rr.(type) {
		case *mdns.A:
			out = append(out, r.A.String())
		case *mdns.AAAA:
			out = append(out, r.AAAA.String())
		case *mdns.SRV:
			out = append(out, fmt.Sprintf("%s:%d", r.Target, r.Port))
		}
	}
	return out
}

func wantRcode(t testing.TB, r *mdns.Msg, rcode int) {
	t.Helper()
	if r.Rcode != rcode {
		t.Fatalf("rcode %s, want %s\n%v", mdns.RcodeToString[r.Rcode], mdns.RcodeToString[rcode], r)
	}
}

// wantSOA checks a negative answer's authority section.
func wantSOA(t testing.TB, r *mdns.Msg, zone string, minttl uint32) {
	t.Helper()
	if len(r.Answer) != 0 || len(r.Ns) != 1 {
		t.Fatalf("want no answer and one SOA, got\n%v", r)
	}
	soa, ok := r.Ns[0].(*mdns.SOA)
	if !ok || soa.Hdr.Name != zone || soa.Minttl != minttl || soa.Hdr.Ttl != minttl {
		t.Fatalf("SOA %v: want owner %s, minimum and TTL %d", r.Ns[0], zone, minttl)
	}
}

// counter returns the sum of the named counter's series.
func counter(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}
