package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	mdns "github.com/miekg/dns"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-sidecar/vigil/configs"
	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/admin"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// running is a vigil started by runApp.
type running struct {
	a    *app
	base string // admin URL
	addr string // admin host:port
	stop func()
}

// runApp runs a wired vigil on the configuration file path (read again by reloads) until stop
// or the end of the test.
func runApp(t *testing.T, path string) *running {
	t.Helper()
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	a, err := newApp(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	addrc := make(chan net.Addr, 1)
	a.onAdmin = func(ad net.Addr) { addrc <- ad }
	a.hup = make(chan os.Signal)
	a.reload = func() (*configs.Config, error) { return loadConfig(path) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(2 * time.Second):
				t.Error("vigil did not stop within 2s")
			}
		})
	}
	t.Cleanup(stop)
	select {
	case ad := <-addrc:
		return &running{a: a, base: "http://" + ad.String(), addr: ad.String(), stop: stop}
	case err := <-done:
		t.Fatalf("vigil stopped: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("admin did not start")
	}
	return nil
}

// xdsAddr waits for the xDS server's address.
func (r *running) xdsAddr(t *testing.T) string {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() bool { return r.a.xds.Addr() != nil }, "xds listening")
	return r.a.xds.Addr().String()
}

// dnsAddr waits for the DNS server's address.
func (r *running) dnsAddr(t *testing.T) string {
	t.Helper()
	select {
	case <-r.a.dns.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("dns not ready")
	}
	return r.a.dns.Addr()
}

// srvPorts asks the real DNS server for NAME.service.consul SRV and returns the ports, sorted.
func srvPorts(t *testing.T, addr, name string) []int {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(name+".service.consul.", mdns.TypeSRV)
	c := &mdns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("dns: %v", err)
	}
	var ports []int
	for _, rr := range r.Answer {
		if srv, ok := rr.(*mdns.SRV); ok {
			ports = append(ports, int(srv.Port))
		}
	}
	slices.Sort(ports)
	return ports
}

// adsDelta opens a delta ADS stream to addr subscribed to the endpoints of clusters.
func adsDelta(t *testing.T, addr string, clusters ...string) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); cc.Close() })
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "control-test"}, TypeUrl: resourcev3.EndpointType,
		ResourceNamesSubscribe: clusters}); err != nil {
		t.Fatal(err)
	}
	return st
}

// nextDelta receives the next response within a bounded wait and ACKs it.
func nextDelta(t *testing.T, st discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient) *discoveryv3.DeltaDiscoveryResponse {
	t.Helper()
	type res struct {
		r   *discoveryv3.DeltaDiscoveryResponse
		err error
	}
	ch := make(chan res, 1)
	go func() { r, err := st.Recv(); ch <- res{r, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("xds recv: %v", r.err)
		}
		st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.r.TypeUrl, ResponseNonce: r.r.Nonce})
		return r.r
	case <-time.After(5 * time.Second):
		t.Fatal("no xds response within 5s")
	}
	return nil
}

// endpointHealth renders a delta response's endpoints as "cluster port STATUS", sorted.
func endpointHealth(t *testing.T, r *discoveryv3.DeltaDiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, res := range r.Resources {
		var cla endpointv3.ClusterLoadAssignment
		if err := res.Resource.UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		for _, l := range cla.Endpoints {
			for _, e := range l.LbEndpoints {
				out = append(out, fmt.Sprintf("%s %d %s", cla.ClusterName,
					e.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue(), e.HealthStatus))
			}
		}
	}
	slices.Sort(out)
	return out
}

// waitEndpoints reads responses from st (each wait bounded, at most 20) until one renders as want.
func waitEndpoints(t *testing.T, st discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, want []string) {
	t.Helper()
	var got []string
	for range 20 {
		if got = endpointHealth(t, nextDelta(t, st)); slices.Equal(got, want) {
			return
		}
	}
	t.Fatalf("xds endpoints: %q, want %q", got, want)
}

func servedIDs(a *app, upstream string) []string {
	var ids []string
	if u := a.table.Snapshot().Lookup(upstream); u != nil {
		for _, in := range u.Served {
			ids = append(ids, in.ID)
		}
	}
	return ids
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestMaintenance puts one instance into maintenance with `vigil maint`: the table stops serving
// it, DNS (real server, SRV) omits it, xDS (an open delta ADS stream) marks it DRAINING; the hold
// survives a restart (persisted next to the state file); `vigil maint disable` serves it again.
func TestMaintenance(t *testing.T) {
	dir := t.TempDir()
	var bs [2]*backend
	for i := range bs {
		bs[i] = &backend{kind: "tcp", addr: "127.0.0.1:0"}
		bs[i].start(t)
		t.Cleanup(bs[i].kill)
	}
	tokenFile := filepath.Join(dir, "token")
	writeFile(t, tokenFile, "s3cret\n")
	path := filepath.Join(dir, "vigil.yaml")
	writeFile(t, path, fmt.Sprintf(`
admin: {listen: "127.0.0.1:0", token_file: %q}
discovery: {state_file: %q}
xds: {listen: "127.0.0.1:0", coalesce: 1ms}
dns: {listen: "127.0.0.1:0"}
defaults: {check: {interval: 200ms, timeout: 100ms, unhealthy_interval: 200ms}}
upstreams:
  - name: api
    instances: [{id: a, address: 127.0.0.1, port: %d}, {id: b, address: 127.0.0.1, port: %d}]
`, tokenFile, filepath.Join(dir, "state.json"), bs[0].port(), bs[1].port()))
	pa, pb := bs[0].port(), bs[1].port()
	both := []int{min(pa, pb), max(pa, pb)}

	r := runApp(t, path)
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() bool { return len(servedIDs(r.a, "api")) == 2 }, "both served")
	dnsAddr := r.dnsAddr(t)
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() bool { return slices.Equal(srvPorts(t, dnsAddr, "api"), both) },
		"dns answers both")
	st := adsDelta(t, r.xdsAddr(t), "api")
	want := []string{fmt.Sprintf("api %d HEALTHY", pa), fmt.Sprintf("api %d HEALTHY", pb)}
	slices.Sort(want)
	waitEndpoints(t, st, want)

	maint := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := cli(append([]string{"maint"}, append(args, "-addr", r.addr, "-token-file", tokenFile, "-actor", "alice")...), &out, &errb)
		return code, out.String(), errb.String()
	}
	// Wrong token: refused, nothing changes.
	bad := filepath.Join(dir, "bad-token")
	writeFile(t, bad, "guess")
	var out, errb bytes.Buffer
	if code := cli([]string{"maint", "enable", "api/a", "-addr", r.addr, "-token-file", bad}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "403") {
		t.Fatalf("wrong token: exit %d: %s", code, errb.String())
	}
	if code, _, e := maint("enable", "api/nope"); code != 1 || !strings.Contains(e, "404") {
		t.Fatalf("unknown instance: exit %d: %s", code, e)
	}
	if code, o, e := maint("enable", "api/a", "-reason", "kernel upgrade"); code != 0 || !strings.Contains(o, "api/a: in maintenance") {
		t.Fatalf("maint enable: exit %d: %s %s", code, o, e)
	}

	// The one judge: the table serves b alone; each frontend follows it.
	if ids := servedIDs(r.a, "api"); !slices.Equal(ids, []string{"b"}) {
		t.Errorf("table serves %v, want [b]", ids)
	}
	in := r.a.table.Snapshot().Lookup("api").Instances[0]
	if in.ID != "a" || in.State != table.Draining || in.Reason != "maintenance: kernel upgrade" {
		t.Errorf("held instance: %s %v %q", in.ID, in.State, in.Reason)
	}
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() bool { return slices.Equal(srvPorts(t, dnsAddr, "api"), []int{pb}) },
		"dns omits the instance in maintenance")
	want = []string{fmt.Sprintf("api %d DRAINING", pa), fmt.Sprintf("api %d HEALTHY", pb)}
	slices.Sort(want)
	waitEndpoints(t, st, want)
	b, err := os.ReadFile(filepath.Join(dir, "state.maint.json"))
	if err != nil || !strings.Contains(string(b), `"reason": "kernel upgrade"`) || !strings.Contains(string(b), `"actor": "alice"`) {
		t.Fatalf("persisted state: %v\n%s", err, b)
	}

	// A restart keeps it: held before the first probe, so never served in between.
	r.stop()
	r = runApp(t, path)
	if ids := servedIDs(r.a, "api"); slices.Contains(ids, "a") {
		t.Errorf("a served at once after the restart: %v", ids)
	}
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() bool { return slices.Equal(servedIDs(r.a, "api"), []string{"b"}) },
		"b served after the restart")
	if in := r.a.table.Snapshot().Lookup("api").Instances[0]; in.State != table.Draining {
		t.Errorf("after restart a is %v, want draining", in.State)
	}
	dnsAddr = r.dnsAddr(t)
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() bool { return slices.Equal(srvPorts(t, dnsAddr, "api"), []int{pb}) },
		"dns after the restart answers b alone")
	st = adsDelta(t, r.xdsAddr(t), "api")
	waitEndpoints(t, st, want)
	// -config: the admin address and token file come from a configuration file.
	cfgFile := filepath.Join(dir, "client.yaml")
	writeFile(t, cfgFile, fmt.Sprintf("admin: {listen: %q, token_file: %q}\nallow_empty: true\n", r.addr, tokenFile))
	out.Reset()
	if code := cli([]string{"maint", "list", "-config", cfgFile}, &out, &errb); code != 0 || !strings.Contains(out.String(), "api/a") ||
		!strings.Contains(out.String(), "kernel upgrade") {
		t.Errorf("maint list after restart: exit %d: %s %s", code, out.String(), errb.String())
	}

	if code, o, e := maint("disable", "api/a"); code != 0 || !strings.Contains(o, "out of maintenance") {
		t.Fatalf("maint disable: exit %d: %s %s", code, o, e)
	}
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() bool { return slices.Equal(srvPorts(t, dnsAddr, "api"), both) },
		"dns serves both again")
	if ids := servedIDs(r.a, "api"); len(ids) != 2 {
		t.Errorf("table serves %v after disable", ids)
	}
	if code, _, _ := maint("disable", "api/a"); code != 1 {
		t.Errorf("disable of what is not in maintenance: exit %d, want 1", code)
	}
}

// TestReloadEndpoint: POST /v1/reload applies a good configuration, refuses a bad one listing every
// error (the running one kept), and says which changed settings need a restart.
func TestReloadEndpoint(t *testing.T) {
	dir := t.TempDir()
	b := &backend{kind: "tcp", addr: "127.0.0.1:0"}
	b.start(t)
	t.Cleanup(b.kill)
	tokenFile := filepath.Join(dir, "token")
	writeFile(t, tokenFile, "s3cret")
	head := fmt.Sprintf(`
admin: {listen: "127.0.0.1:0", token_file: %q}
xds: {listen: "127.0.0.1:0"}
dns: {listen: "127.0.0.1:0"}
defaults: {check: {interval: 200ms, timeout: 100ms, unhealthy_interval: 200ms}}
`, tokenFile)
	up := func(name string) string {
		return fmt.Sprintf("  - name: %s\n    instances: [{address: 127.0.0.1, port: %d}]\n", name, b.port())
	}
	path := filepath.Join(dir, "vigil.yaml")
	writeFile(t, path, head+"upstreams:\n"+up("a"))
	r := runApp(t, path)

	post := func(token string) (int, admin.ReloadResult) {
		req, _ := http.NewRequest(http.MethodPost, r.base+"/v1/reload", strings.NewReader(`{"reason":"test"}`))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var res admin.ReloadResult
		json.NewDecoder(resp.Body).Decode(&res)
		return resp.StatusCode, res
	}
	writeFile(t, path, head+"upstreams:\n"+up("a")+up("b"))
	if code, _ := post("wrong"); code != http.StatusForbidden {
		t.Fatalf("wrong token: %d", code)
	}
	if _, ok := r.a.table.Snapshot().Upstreams["b"]; ok {
		t.Fatal("reloaded with a wrong token")
	}
	if code, res := post("s3cret"); code != http.StatusOK || !res.Applied || len(res.RestartRequired) != 0 {
		t.Fatalf("good reload: %d %+v", code, res)
	}
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() bool { return len(servedIDs(r.a, "b")) == 1 }, "b added and served")

	// Bad: two errors, both listed; the running configuration stays.
	writeFile(t, path, head+"upstreams:\n  - name: Bad\n    instances: [{address: 127.0.0.1, port: 0}]\n")
	running := func() *configs.Config { r.a.reloadMu.Lock(); defer r.a.reloadMu.Unlock(); return r.a.cfg }
	before := running()
	code, res := post("s3cret")
	if code != http.StatusUnprocessableEntity || res.Applied || len(res.Errors) != 2 ||
		!strings.Contains(strings.Join(res.Errors, "\n"), "upstreams[0].instances[0].port") {
		t.Fatalf("bad reload: %d %+v", code, res)
	}
	if s := r.a.table.Snapshot(); running() != before || !slices.Equal(s.Names, []string{"a", "b"}) {
		t.Errorf("a bad reload changed the running configuration or the table: upstreams %v", s.Names)
	}

	// A listen address change is not applied: the answer says which settings need a restart.
	writeFile(t, path, strings.Replace(head, `dns: {listen: "127.0.0.1:0"}`, `dns: {listen: "127.0.0.1:1053"}`, 1)+"upstreams:\n"+up("a")+up("b"))
	code, res = post("s3cret")
	if code != http.StatusOK || !slices.Equal(res.RestartRequired, []string{"dns"}) || !strings.Contains(res.Message, "need a restart") {
		t.Fatalf("listen change: %d %+v", code, res)
	}
	if l := running().DNS.Listen; l != "127.0.0.1:0" {
		t.Errorf("running dns.listen is now %q", l)
	}
	var out, errb bytes.Buffer
	t.Setenv("VIGIL_TOKEN", "s3cret")
	if code := cli([]string{"reload", "-addr", r.addr}, &out, &errb); code != 0 || !strings.Contains(out.String(), "dns") {
		t.Errorf("vigil reload: exit %d: %s %s", code, out.String(), errb.String())
	}
}

// TestEmptyTokenRefused: an empty token file would turn control off unnoticed: vigil refuses to start.
func TestEmptyTokenRefused(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	writeFile(t, tokenFile, "\n")
	path := filepath.Join(t.TempDir(), "vigil.yaml")
	writeFile(t, path, fmt.Sprintf("admin: {listen: \"127.0.0.1:0\", token_file: %q}\nallow_empty: true\n", tokenFile))
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newApp(cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "admin.token_file") {
		t.Fatalf("newApp with an empty token file: %v", err)
	}
}
