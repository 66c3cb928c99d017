package admin_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/admin"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// The admin API shows the local service's reserved upstream, marked local, so that its probe
// status is readable; configured upstreams are not marked.
func TestLocalServiceMarked(t *testing.T) {
	local := table.LocalUpstream("web")
	tb := table.New(table.Config{Default: table.DefaultPolicy()})
	tb.SetMembership(discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{
		"api": {Name: "api", Instances: []discovery.Instance{{ID: "a", Address: "127.0.0.1", Port: 1}}},
		local: {Name: local, Instances: []discovery.Instance{{ID: "web-1", Address: "127.0.0.1", Port: 2}}},
	}}, nil)
	base := serve(t, tb, prometheus.NewRegistry())
	code, body := get(t, base+"/v1/upstreams")
	var tab admin.Table
	if code != http.StatusOK || json.Unmarshal(body, &tab) != nil {
		t.Fatalf("GET /v1/upstreams: %d %s", code, body)
	}
	got := map[string]bool{}
	for _, u := range tab.Upstreams {
		got[u.Name] = u.Local
	}
	if len(got) != 2 || got["api"] || !got[local] {
		t.Errorf("local marks %v, want api false and %s true", got, local)
	}
}
