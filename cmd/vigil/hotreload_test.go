package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/vigil-sidecar/vigil/internal/testutil"
	"github.com/vigil-sidecar/vigil/proxy/admin"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// countingHTTP is a keep-alive HTTP backend that counts the connections it accepts and the
// requests it answers: an HTTP prober keeps one connection, so a restarted prober shows as a new one.
type countingHTTP struct {
	conns, reqs atomic.Int64
	port        int
}

func startCounting(t *testing.T) *countingHTTP {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &countingHTTP{port: l.Addr().(*net.TCPAddr).Port}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { c.reqs.Add(1); io.WriteString(w, "ok") }),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				c.conns.Add(1)
			}
		},
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return c
}

// resourceNames returns the names a delta response sends and removes, typed.
func resourceNames(t *testing.T, r *discoveryv3.DeltaDiscoveryResponse) (sent, removed []string) {
	t.Helper()
	for _, res := range r.Resources {
		switch r.TypeUrl {
		case resourcev3.ClusterType:
			var c clusterv3.Cluster
			if err := res.Resource.UnmarshalTo(&c); err != nil {
				t.Fatal(err)
			}
			sent = append(sent, "cds:"+c.Name)
		case resourcev3.EndpointType:
			var cla endpointv3.ClusterLoadAssignment
			if err := res.Resource.UnmarshalTo(&cla); err != nil {
				t.Fatal(err)
			}
			sent = append(sent, "eds:"+cla.ClusterName)
		default:
			sent = append(sent, r.TypeUrl+":"+res.Name)
		}
	}
	for _, n := range r.RemovedResources {
		removed = append(removed, r.TypeUrl[strings.LastIndex(r.TypeUrl, ".")+1:]+":"+n)
	}
	return sent, removed
}

// TestHotReloadUndisturbed: a reload (POST /v1/reload) that adds an upstream, changes one's check
// and removes a third leaves the untouched upstream alone: its prober keeps its connection and
// its rhythm (no restart), and an open delta ADS stream gets none of its resources again. The
// changed upstream's prober does restart (a new connection): the count would see a restart.
func TestHotReloadUndisturbed(t *testing.T) {
	dir := t.TempDir()
	keep, change, gone, added := startCounting(t), startCounting(t), startCounting(t), startCounting(t)
	tokenFile := filepath.Join(dir, "token")
	writeFile(t, tokenFile, "s3cret")
	head := fmt.Sprintf(`
admin: {listen: "127.0.0.1:0", token_file: %q}
xds: {listen: "127.0.0.1:0", coalesce: 1ms}
dns: {listen: ""}
defaults: {check: {kind: http, http: {path: /healthz}, interval: 1s, unhealthy_interval: 1s, timeout: 900ms}}
upstreams:
`, tokenFile)
	up := func(name string, b *countingHTTP, extra string) string {
		return fmt.Sprintf("  - name: %s\n    instances: [{id: i, address: 127.0.0.1, port: %d}]\n%s", name, b.port, extra)
	}
	path := filepath.Join(dir, "vigil.yaml")
	writeFile(t, path, head+up("keep", keep, "")+up("change", change, "")+up("gone", gone, ""))
	r := runApp(t, path)
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool {
		return len(servedIDs(r.a, "keep")) == 1 && len(servedIDs(r.a, "change")) == 1 && len(servedIDs(r.a, "gone")) == 1
	}, "all probed healthy")

	// One open ADS stream: every cluster (wildcard) and the endpoints of keep and change.
	st := adsDelta(t, r.xdsAddr(t), "keep", "change")
	st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResourceNamesSubscribe: []string{"*"}})
	seen := map[string]int{}
	for seen["cds:keep"] == 0 || seen["eds:keep"] == 0 || seen["eds:change"] == 0 {
		sent, _ := resourceNames(t, nextDelta(t, st))
		for _, n := range sent {
			seen[n]++
		}
	}
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool { return keep.reqs.Load() >= 2 }, "keep probed twice")
	keepConns, keepReqs, changeConns := keep.conns.Load(), keep.reqs.Load(), change.conns.Load()
	if keepConns != 1 {
		t.Fatalf("keep's prober used %d connections before the reload, want 1 (kept alive)", keepConns)
	}

	writeFile(t, path, head+up("keep", keep, "")+
		up("change", change, "    check: {interval: 1200ms}\n")+
		up("added", added, ""))
	var res admin.ReloadResult
	f := controlFlags{addr: &r.addr, tokenFile: &tokenFile, actor: new(string), reason: new(string)}
	if code, err := f.call(http.MethodPost, "/v1/reload", &res); err != nil || code != http.StatusOK || len(res.RestartRequired) != 0 {
		t.Fatalf("reload: %d %v %+v", code, err, res)
	}

	// xDS: the reload's cluster changes come (added in, gone out); then a sentinel change of
	// change's endpoints. Nothing of keep is sent again before it.
	after := map[string]int{}
	check := func(r *discoveryv3.DeltaDiscoveryResponse) {
		sent, removed := resourceNames(t, r)
		for _, n := range append(sent, removed...) {
			after[n]++
		}
	}
	for after["cds:added"] == 0 || after["Cluster:gone"] == 0 {
		check(nextDelta(t, st))
	}
	r.a.table.SetHolds([]table.Hold{{Upstream: "change", Reason: "sentinel"}})
	for after["eds:change"] == 0 {
		check(nextDelta(t, st))
	}
	if after["cds:keep"] != 0 || after["eds:keep"] != 0 {
		t.Errorf("keep's resources sent again on the open stream: %v", after)
	}
	t.Logf("sent on the open stream after the reload: %v", after)

	// Probers: keep goes on, on its one connection; change restarted (new connection); added is probed.
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool {
		return keep.reqs.Load() >= keepReqs+2 && change.conns.Load() > changeConns && added.reqs.Load() >= 1
	}, "keep probed twice more, change's prober restarted, added probed")
	if n := keep.conns.Load(); n != keepConns {
		t.Errorf("keep's prober opened %d connection(s) across the reload, want none: restarted", n-keepConns)
	}
	goneReqs := gone.reqs.Load()
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() bool { return keep.reqs.Load() >= keepReqs+4 }, "keep probed twice more")
	if n := gone.reqs.Load(); n != goneReqs {
		t.Errorf("gone still probed after its removal: %d -> %d", goneReqs, n)
	}
}
