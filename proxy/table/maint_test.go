package table_test

import (
	"testing"
	"time"

	"github.com/vigil-sidecar/vigil/discovery"
	"github.com/vigil-sidecar/vigil/proxy/health"
	"github.com/vigil-sidecar/vigil/proxy/table"
)

// TestHolds: a held instance is Draining with the operator's reason and not served, a held
// upstream serves nothing (not even in panic with fail_open), a hold on an upstream not yet
// known applies when it appears, and upstreams whose holds did not change keep their version.
func TestHolds(t *testing.T) {
	tb := table.New(table.Config{Default: table.Policy{PanicMode: table.FailOpen, PanicThreshold: 100}})
	ins := []discovery.Instance{{ID: "a", Address: "127.0.0.1", Port: 1}, {ID: "b", Address: "127.0.0.1", Port: 2}}
	mem := discovery.Membership{Ready: true, Upstreams: map[string]*discovery.Upstream{
		"api": {Name: "api", Instances: ins}, "db": {Name: "db", Instances: ins},
	}}
	st := map[discovery.Key]health.Status{}
	for _, u := range []string{"api", "db"} {
		for _, id := range []string{"a", "b"} {
			st[discovery.Key{Upstream: u, ID: id}] = health.Status{State: health.Healthy}
		}
	}
	tb.SetMembership(mem, st)
	dbVersion := tb.Snapshot().Lookup("db").Version

	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tb.SetHolds([]table.Hold{{Upstream: "api", Instance: "a", Reason: "kernel upgrade", Actor: "alice", Since: since}})
	api := tb.Snapshot().Lookup("api")
	if a := api.Instances[0]; a.State != table.Draining || a.Served || a.Reason != "maintenance: kernel upgrade" || !a.Since.Equal(since) {
		t.Errorf("held instance: %+v", a)
	}
	if served(api) != "b:0" || api.Healthy != 1 || api.Total != 1 {
		t.Errorf("api served %q healthy %d/%d, want b alone, 1/1", served(api), api.Healthy, api.Total)
	}
	if v := tb.Snapshot().Lookup("db").Version; v != dbVersion {
		t.Errorf("db rebuilt by a hold on api: version %d -> %d", dbVersion, v)
	}

	tb.SetHolds([]table.Hold{{Upstream: "api"}, {Upstream: "later", Instance: "x"}})
	if api := tb.Snapshot().Lookup("api"); len(api.Served) != 0 || api.Panic {
		t.Errorf("held upstream: served %q panic %v, want nothing served", served(api), api.Panic)
	}
	if got := tb.Holds(); len(got) != 2 || got[0].Target() != "api" || got[1].Target() != "later/x" {
		t.Errorf("Holds() = %+v", got)
	}
	mem.Upstreams["later"] = &discovery.Upstream{Name: "later", Instances: []discovery.Instance{{ID: "x", Address: "127.0.0.1", Port: 3}}}
	st[discovery.Key{Upstream: "later", ID: "x"}] = health.Status{State: health.Healthy}
	tb.SetMembership(mem, st)
	if x := tb.Snapshot().Lookup("later").Instances[0]; x.State != table.Draining || x.Served {
		t.Errorf("hold set before its upstream appeared: %+v", x)
	}

	tb.SetHolds(nil)
	if api := tb.Snapshot().Lookup("api"); served(api) != "a:0 b:0" || api.Instances[0].State != table.Healthy {
		t.Errorf("after the holds are lifted: served %q, a %v", served(api), api.Instances[0].State)
	}
}
